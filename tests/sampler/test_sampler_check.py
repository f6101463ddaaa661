"""benchmarks/sampler_check.py (the sampler's part of a first GPU lease) runs on CPU at its tiny size and
writes every part's JSON; with no time left it still writes a JSON that lists what it skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampler_check.py"


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "sampler.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_tiny_run_writes_every_part(tmp_path):
    record = _run(tmp_path)
    parts = record["parts"]
    assert record["errors"] == {} and record["skipped"] == []
    assert set(parts) == {"setup", "ops", "graphed", "eager", "merged", "kernels", "logp_gap", "hf", "short"}
    ops = parts["ops"]
    assert (
        ops["syncs"] == 0
        and ops["merged"]["ops_per_layer"] < ops["ops_per_layer"] < ops["fp32_adapters"]["ops_per_layer"]
    )
    assert parts["merged"]["sampler_graphed"] == 1.0 and parts["merged"]["merged_copies_mib"] > 0
    assert parts["graphed"]["sampler_graphed"] == 1.0 and parts["graphed"]["graphs"] >= 1
    assert parts["kernels"]["per_step"] > 0
    assert parts["logp_gap"]["max"] < 1e-4  # fp32 on CPU: the sampler's log-probs are the forward's
    assert parts["hf"]["tokens_per_s"] > 0 and parts["eager"]["tokens_per_s"] > 0
    for n in ("n1", "n2"):
        assert parts["short"][n]["completed"] and parts["short"][n]["greedy_equals_eager"], parts["short"]
    assert parts["short"]["n2"]["sampler_graphed"] == 1.0 and parts["short"]["returncode"] == 0


def test_no_time_left_still_writes_the_json(tmp_path):
    record = _run(tmp_path, "--max-seconds", "0")
    assert record["parts"] == {} and "graphed" in record["skipped"] and "short" in record["skipped"]
