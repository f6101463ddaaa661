"""Every Triton kernel, every autotune config, compiled for sm_90a and sm_80 on CPU with Triton's own toolchain.

`python -m tokrl_kernels._aot` (see its docstring) runs in a subprocess without TRITON_INTERPRET (tests/conftest.py
sets it for this process; the kernels must be real JIT functions with the GPU config lists), at the Qwen2-1.5B
head (D = 1536, V = 151936, k = 4096) in bf16/bf16 (plain and with entropy + soft-cap), fp32/fp32 and fp32 hidden
with a bf16 head; sm_80 gets the plain problems (a shared-memory check). It compiles ~55 kernels in ~1.5 minutes on
2 cores (Triton's cache makes a rerun seconds). Asserted: each compiles, fits the target's shared memory per block,
every ladder config is compiled, bf16 configs never spill, and the fp32/upcast path of the default kernels neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
_AUTOTUNED = ("lse_split", "dz_chunk", "backward_atomic")
# The atomic backward (not the default) with fp32 hidden and a bf16 head: no config tried compiles without spills
# (the least was 104-296 B; before the ladder fix, 6.6-7.8 KiB). Bounded here, documented in _configs.py.
_SPILL_ALLOWED = {("backward_atomic", "fp32/bf16"): 512}


def _missing_toolchain() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    spec = importlib.util.find_spec("triton.backends.nvidia")
    if spec is None or not spec.submodule_search_locations:
        return "triton's NVIDIA backend is absent"
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "bin"
    missing = [tool for tool in ("ptxas", "cuobjdump") if not (bin_dir / tool).exists()]
    return f"triton's NVIDIA backend ships no {', '.join(missing)} in {bin_dir}" if missing else None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, stated to silence its warning
    cmd = [
        sys.executable,
        "-m",
        "tokrl_kernels._aot",
        "--arch",
        "90",
        "--arch",
        "80",
        "--plain-only",
        "80",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"the AOT sweep wrote no report (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    print(proc.stdout)
    return json.loads(out.read_text())


def _bad(builds, predicate) -> str:
    return "\n".join(f"{b['kernel']} {b['problem']} sm_{b['arch']} {b['config']}: {b}" for b in builds if predicate(b))


def test_every_kernel_compiles_and_fits_shared_memory(report):
    builds = report["builds"]
    assert builds, "nothing was compiled"
    failed = _bad(builds, lambda b: not b["ok"])
    assert not failed, f"kernels that do not compile:\n{failed}"
    too_big = _bad(builds, lambda b: b["shared_bytes"] > b["shared_limit"])
    assert not too_big, f"kernels that need more shared memory than the target has:\n{too_big}"


def test_every_ladder_config_is_compiled(report):
    # Each autotuned kernel: every low-precision config in bf16 and the ieee config in fp32, on both targets; every
    # plain kernel on both targets.
    seen = {(b["kernel"], b["problem"], b["arch"], b["config"]) for b in report["builds"]}
    for arch in (90, 80):
        for kernel, ladder in report["ladders"].items():
            for config in ladder["low"]:
                assert (kernel, "bf16/bf16", arch, config) in seen, f"{kernel} {config} not compiled for sm_{arch}"
            for problem in ("fp32/fp32", "fp32/bf16"):
                assert (kernel, problem, arch, ladder["ieee"][0]) in seen, f"{kernel} {problem} sm_{arch} missing"
        for kernel in ("merge", "pg_forward", "pg_backward"):
            assert any(b["kernel"] == kernel and b["arch"] == arch for b in report["builds"]), f"{kernel} sm_{arch}"
    assert set(report["ladders"]) == set(_AUTOTUNED)


def test_bf16_configs_do_not_spill(report):
    spilled = _bad(report["builds"], lambda b: b["problem"].startswith("bf16") and b["stack_bytes"] > 0)
    assert not spilled, f"bf16 kernels the autotuner may pick that spill registers:\n{spilled}"


def test_fp32_and_upcast_kernels_do_not_spill(report):
    def too_much(b):
        allowed = _SPILL_ALLOWED.get((b["kernel"], b["problem"]), 0)
        return b["problem"].startswith("fp32") and b["stack_bytes"] > allowed

    spilled = _bad(report["builds"], too_much)
    assert not spilled, f"fp32 / fp32-hidden-bf16-head kernels over their spill allowance:\n{spilled}"
