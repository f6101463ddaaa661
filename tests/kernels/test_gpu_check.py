"""benchmarks/gpu_check.py (the first minutes of a GPU lease) and benchmarks/kernel_check.py, tested on CPU.

The runner must leave valid JSON whatever happens to a section (timeout, crash, missing script, no CUDA), write
it after every section (a lease cut mid-run keeps what was measured), and kill a timed-out section's whole process
group. kernel_check runs its --tiny mode (interpreter) end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.utils import BENCHMARKS, load_benchmark_script

gpu_check = load_benchmark_script("gpu_check")
PY = sys.executable


def _section(name, code, limit_s=30.0, **kw):
    return gpu_check.Section(name, lambda out_dir, limit: [PY, "-c", code], limit_s, needs_cuda=False, **kw)


def test_without_cuda_every_default_section_is_skipped(tmp_path):
    report = gpu_check.run_all(gpu_check.default_sections(), tmp_path, budget_s=60, has_cuda=False)
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["sections"] == report["sections"]
    assert [s.name for s in gpu_check.default_sections()] == list(on_disk["sections"])
    assert all(record["status"] == "skipped: no CUDA" for record in on_disk["sections"].values())
    assert on_disk["versions"]["torch"] and "finished" in on_disk


def test_timeout_keeps_valid_json_and_the_next_section_runs(tmp_path):
    # The slow section starts a grandchild that would outlive it; the whole process group must die at the limit.
    pid_file = tmp_path / "grandchild.pid"
    slow = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    sections = [_section("slow", slow, limit_s=3), _section("after", "print('fine')")]
    report = gpu_check.run_all(sections, tmp_path, budget_s=60)
    slow_record = report["sections"]["slow"]
    assert slow_record["status"] == "timeout" and slow_record["rc"] is None and slow_record["seconds"] < 30
    assert "started" in slow_record["output_tail"]
    assert report["sections"]["after"]["status"] == "ok"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["slow"]["status"] == "timeout"
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kill is immediate; give the kernel a moment to reap
        if not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, 9)
        pytest.fail("the timed-out section's grandchild was left running")


def test_json_is_written_after_each_section(tmp_path):
    # The second section reads the file while it runs: the first section's result must already be there.
    path = tmp_path / "gpu_check.json"
    reader = f"import json; print('seen:', json.load(open({str(path)!r}))['sections']['first']['status'])"
    sections = [_section("first", "raise SystemExit(3)"), _section("second", reader)]
    report = gpu_check.run_all(sections, tmp_path, budget_s=60)
    assert report["sections"]["first"]["status"] == "failed" and report["sections"]["first"]["rc"] == 3
    assert "seen: failed" in report["sections"]["second"]["output_tail"]


def test_budget_and_missing_script_skip_with_a_reason(tmp_path):
    sections = [
        _section("needs_time", "print(1)", min_s=10_000),
        _section("needs_file", "print(1)", needs_file=BENCHMARKS / "no_such_check.py"),
        _section("runs", "print(1)"),
    ]
    report = gpu_check.run_all(sections, tmp_path, budget_s=60)["sections"]
    assert report["needs_time"]["status"].startswith("skipped:") and "budget" in report["needs_time"]["status"]
    assert report["needs_file"]["status"] == "skipped: benchmarks/no_such_check.py not found"
    assert report["runs"]["status"] == "ok"


def test_pytest_output_is_parsed():
    output = (
        "Triton autotuning for function _lse_split_kernel,\nwith key as (1536, 151936, 4096, False),\n"
        "finished after 2.31s,\nbest config selected: BLOCK_M: 128, BLOCK_V: 128, num_warps: 8;\n"
        "FAILED tests/kernels/test_gpu_kernels.py::test_x - AssertionError\n"
        "1 failed, 11 passed, 3 skipped in 61.2s\n"
    )
    result = gpu_check.parse_pytest(output, Path("."))
    assert result["counts"] == {"failed": 1, "passed": 11, "skipped": 3}
    assert result["autotuned"] == [
        {
            "kernel": "_lse_split_kernel",
            "key": "(1536, 151936, 4096, False)",
            "seconds": 2.31,
            "config": "BLOCK_M: 128, BLOCK_V: 128, num_warps: 8",
        }
    ]
    assert result["failures"] == ["FAILED tests/kernels/test_gpu_kernels.py::test_x - AssertionError"]


def test_cli_writes_to_out(tmp_path):
    out = tmp_path / "run"
    cmd = [PY, str(BENCHMARKS / "gpu_check.py"), "--out", str(out), "--only", "gpu_tests"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a GPU machine too takes the no-CUDA path here
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["sections"]) == ["gpu_tests"]


def test_kernel_check_tiny_runs_end_to_end(tmp_path):
    out = tmp_path / "kernel.json"
    cmd = [
        PY,
        str(BENCHMARKS / "kernel_check.py"),
        "--tiny",
        "--out",
        str(out),
        "--dtypes",
        "bf16/bf16,fp32/bf16",
        "--heads",
        "frozen,trained",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(c["dtypes"], c["head"]) for c in report["cases"]] == [
        ("bf16/bf16", "frozen"),
        ("bf16/bf16", "trained"),
        ("fp32/bf16", "frozen"),
        ("fp32/bf16", "trained"),
    ]
    for case in report["cases"]:
        assert case["fwd_ms"] > 0 and case["fwd_bwd_ms"] > 0 and case["kernels_ms"]
        assert ("dW" in case["errors"]) == (case["head"] == "trained")
        for name, err in case["errors"].items():  # the tolerance rule, the twin as the reference
            assert err["tokrl"] <= 2 * err["naive"] + 1e-3, f"{case['dtypes']} {case['head']} {name}: {err}"


def test_benchmark_lease_subset_is_small():
    # `pytest benchmarks/test_linear_pg_loss.py -m lease` must pick a few cases (of 270), of the lease providers only.
    cmd = [
        PY,
        "-m",
        "pytest",
        str(BENCHMARKS / "test_linear_pg_loss.py"),
        "-m",
        "lease",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=BENCHMARKS.parent)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0 and 0 < len(ids) <= 16, proc.stdout[-2000:]
    assert all(line.rsplit("-", 1)[-1].rstrip("]") in ("naive", "naive_sel", "tokrl", "tokrl_atomic") for line in ids)
    assert all("fwd_bwd" in line for line in ids) and {"100pct" in line for line in ids} == {True, False}
