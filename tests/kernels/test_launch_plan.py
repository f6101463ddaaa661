"""What the launchers hand Triton, checked on CPU: autotune keys, specialisations, host syncs, config ladders.

The launchers run on meta tensors with every kernel launch intercepted (`tokrl_kernels._aot`), so nothing runs and
any host read of a device value (`.item()`, `bool(t)`, `nonzero`) raises: a launcher that syncs cannot pass.
Specialisations are computed with Triton's own JIT binder for an sm_90 target, as a GPU run would.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tokrl_kernels import _aot, _backward_gemm, _configs, _validation  # noqa: E402  (after the skip)
from tokrl_kernels._configs import row_bucket  # noqa: E402

AUTOTUNED = ["lse_split", "dz_chunk", "backward_atomic"]


def _by_kernel(k: int, **problem) -> dict[str, list[_aot.Launch]]:
    launches: dict[str, list[_aot.Launch]] = {}
    for launch in _aot.capture_launches(_aot.Problem(k=k, **problem)):
        launches.setdefault(launch.kernel, []).append(launch)
    return launches


def test_row_bucket():
    assert [row_bucket(k) for k in (0, 1, 16, 17, 50, 64, 65, 4096, 4097, 10**6)] == [
        16,
        16,
        16,
        32,
        64,
        64,
        128,
        4096,
        8192,
        8192,
    ]


@pytest.mark.parametrize("kernel", AUTOTUNED)
def test_autotune_key_follows_the_row_bucket(kernel: str):
    # T-SPMO's ~50 rows and GRPO's ~4096 must not share a tuned config; k's within one bucket must (no re-tuning).
    key = {k: _aot.autotune_key(_by_kernel(k)[kernel][0]) for k in (50, 60, 3000, 4096)}
    assert key[50] != key[4096], f"{kernel}: the autotune key ignores the row count: {key[50]}"
    assert key[50] == key[60] and key[3000] == key[4096], f"{kernel}: the key is not bucketed: {key}"


@pytest.mark.parametrize(
    "problem",
    [{}, {"features": True}, {"hidden_dtype": "fp32", "weight_dtype": "bf16"}],
    ids=["bf16", "bf16-features", "fp32-bf16"],
)
def test_row_counts_never_respecialise(problem: dict):
    # Triton compiles a new binary per specialisation (an int divisible by 16 or equal to 1, an aligned pointer).
    # For one kernel variant (same constexprs), no row count may add one: k = 1, 17, 50 and 4100 (two row blocks)
    # must bind exactly as k = 4096 does, or a run would compile mid-way whenever k changed.
    specs: dict[tuple, set[str]] = {}
    for k in (1, 17, 50, 4096, 4100):
        for kernel, launches in _by_kernel(k, **problem).items():
            for launch in launches:
                _, kwargs, (_, spec, _) = _aot.specialization(launch)
                variant = (kernel, repr(sorted((n, v) for n, v in kwargs.items() if n.isupper())))
                specs.setdefault(variant, set()).add(repr(spec))
    respecialised = {variant: len(seen) for variant, seen in specs.items() if len(seen) > 1}
    assert not respecialised, f"kernels specialised anew for some row count: {respecialised}"


def test_launchers_make_no_host_sync():
    # capture_launches ran every launcher on meta tensors, where a sync raises; this states it for one problem.
    launches = _aot.capture_launches(_aot.Problem(k=37, hidden_dtype="fp32", weight_dtype="bf16", features=True))
    assert {launch.kernel for launch in launches} == set(_aot.KERNELS)


def _meta_inputs(k=4096, vocab=151936, dim=1536):
    meta = torch.device("meta")
    return dict(
        hidden=torch.empty(k, dim, dtype=torch.bfloat16, device=meta),
        weight=torch.empty(vocab, dim, dtype=torch.bfloat16, device=meta),
        targets=torch.empty(k, dtype=torch.long, device=meta),
        index=torch.empty(k, dtype=torch.long, device=meta),
    )


def test_validation_makes_no_host_sync_off_the_cpu(monkeypatch):
    # The default path checks the ranges on the device: on meta tensors a host read would raise.
    monkeypatch.delenv(_validation.DEBUG_ENV, raising=False)
    x = _meta_inputs()
    index, _ = _validation.validate_logprob_inputs(x["hidden"], x["weight"], x["targets"], x["index"], 1.0)
    rows = torch.empty(4096, device="meta")
    _validation.validate_pg_inputs(
        rows,
        rows,
        rows,
        rows,
        k=index.numel(),
        device=x["hidden"].device,
        eps_low=0.2,
        eps_high=0.2,
        beta=0.1,
        reduction="sum",
    )
    # The debug mode reads the range on the host (and so cannot run on meta tensors).
    monkeypatch.setenv(_validation.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="meta"):
        _validation.validate_logprob_inputs(x["hidden"], x["weight"], x["targets"], x["index"], 1.0)


@pytest.mark.parametrize(("name", "bad"), [("index", 6), ("index", -1), ("targets", 11)])
def test_device_side_range_check_catches_bad_values(monkeypatch, name: str, bad: int):
    # The sync-free check (taken here on CPU tensors) must fail exactly where the host check would.
    monkeypatch.setattr(_validation, "checks_on_device", lambda device: True)
    hidden, weight = torch.randn(6, 8), torch.randn(11, 8)
    args = {"index": torch.tensor([0, 2, 5]), "targets": torch.tensor([0, 10, 3])}
    _validation.validate_logprob_inputs(hidden, weight, args["targets"], args["index"], 1.0)  # in range: passes
    args[name][1] = bad
    with pytest.raises(RuntimeError, match=f"{name}: values must lie in"):
        _validation.validate_logprob_inputs(hidden, weight, args["targets"], args["index"], 1.0)


def test_one_ieee_config_per_kernel():
    # fp32 (and upcast) dots are never benchmarked: one config per kernel; low-precision ladders have no repeats.
    for ladder in (_configs.FORWARD, _configs.DZ, _configs.ATOMIC):
        assert len(ladder.ieee) == 1
        assert len(set(ladder.low)) == len(ladder.low)
        assert ladder.prune(ladder.configs, {}, PRECISION="ieee") == list(ladder.ieee)


@pytest.mark.parametrize(("k", "dim"), [(5000, 1536), (20000, 3584), (9000, 8192), (100, 1536)])
def test_row_blocks_start_aligned(k: int, dim: int):
    # Several row blocks: each starts at a multiple of 16 rows, so the [R]-slices of the row vectors stay aligned.
    rows, _ = _backward_gemm.plan_blocks(k, dim, 151936, 2, True, 2)
    assert rows == k or rows % 16 == 0, f"row block of {rows} rows for k = {k}, D = {dim}"
