"""benchmarks/step_phases.py, profile_step.py and same_run.py: the accounting behind the step profile.

No wall-clock assertions: the clock is replaced by a counter the timed functions advance themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from tests.utils import load_benchmark_script


@pytest.fixture(scope="module")
def phases():
    return load_benchmark_script("step_phases")


class FakeClock:
    """perf_counter and thread_time stand-ins: `advance(s)` moves both by s seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_phase_time_is_exclusive_of_nested_phases(phases, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(phases.time, "perf_counter", clock)
    monkeypatch.setattr(phases.time, "thread_time", clock)
    pc = phases.PhaseClock()
    inner = pc.wrap("reference", lambda: clock.advance(2.0))

    def outer_body():
        clock.advance(1.0)
        inner()
        clock.advance(0.5)

    outer = pc.wrap("packing", outer_body)
    outer()
    outer()
    assert pc.seconds["packing"] == pytest.approx(3.0) and pc.seconds["reference"] == pytest.approx(4.0)
    assert pc.cpu_seconds["packing"] == pytest.approx(3.0) and pc.calls == {"packing": 2, "reference": 2}


def test_patch_restores_classes_modules_and_instances(phases):
    class Update:
        def apply(self):
            return "applied"

    class Optimizer:
        def step(self):
            return "stepped"

    module = SimpleNamespace(sample=lambda: "sampled")
    optimizer = Optimizer()
    pc = phases.PhaseClock()
    assert pc.patch(Update, "apply", "forward") and pc.patch(module, "sample", "sampling")
    assert pc.patch(optimizer, "step", "optimiser") and not pc.patch(module, "missing", "x")
    assert (Update().apply(), module.sample(), optimizer.step()) == ("applied", "sampled", "stepped")
    assert pc.calls == {"forward": 1, "sampling": 1, "optimiser": 1}
    original_sample = module.sample.__wrapped__
    pc.restore()
    assert "step" not in vars(optimizer), "the instance wrapper would leak into the object's state"
    assert module.sample is original_sample and not hasattr(Update.apply, "__wrapped__")


def test_host_reads_are_counted_by_phase_and_methods_restored(phases):
    pc = phases.PhaseClock()
    t = torch.arange(3.0)
    reading = pc.wrap("metrics", lambda: (t.tolist(), float(t[0]), t.sum().item(), bool(t[1] > 0)))
    with pc.count_host_reads():
        reading()
        t.cpu()
    assert pc.host_reads == {"metrics": 4, "other": 1}
    assert "tolist" not in torch.Tensor.__dict__ and "cpu" not in torch.Tensor.__dict__
    t.tolist()
    assert pc.host_reads == {"metrics": 4, "other": 1}


def test_ops_are_attributed_to_the_enclosing_phase(phases):
    pc = phases.PhaseClock()
    x = torch.randn(8, 8)
    two_ops = pc.wrap("forward", lambda: (x @ x).relu())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        two_ops()
        x.add(1)
    counts, self_us = phases.ops_per_phase(prof.events())
    assert counts["forward"] == 2 and counts["other"] == 1  # mm's internals are not counted as ops of their own
    assert "aten::mm" in self_us["forward"] and "aten::add" in self_us["other"]


def _profile(step_s: float) -> dict:
    names = load_benchmark_script("profile_step").PHASE_ORDER
    return {
        "step_s_mean": step_s,
        "step_s_median": step_s,
        "step_cpu_s_mean": step_s,
        "phase_s": dict.fromkeys(names, step_s / len(names)),
        "phase_cpu_s": dict.fromkeys(names, step_s / len(names)),
        "ops_per_step": {"selection": 12.0},
        "host_reads_per_step": {"metrics": 3.0},
        "per_step": {"selected_tokens": 5.0},
        "checkpoint_save_s": 0.01,
        "eval_s": 0.2,
    }


def test_render_shows_profiles_variants_and_ratios():
    profile_step = load_benchmark_script("profile_step")
    tree = {"commit": "a" * 40, "dirty": False, "overrides": {}}
    comparison = {
        "variants": {"base": tree, "new": {**tree, "commit": "b" * 40}},
        "steps_per_run": 4,
        "algorithms": {
            "grpo": {
                "wall_median_s": {"base": 0.2, "new": 0.1},
                "wall_ratio": {"base": 1.0, "new": 0.5},
                "cpu_median_s": {"base": 0.2, "new": 0.15},
                "cpu_ratio": {"base": 1.0, "new": 0.75},
                "rounds": {"base": [0.2, 0.21], "new": [0.1, 0.11]},
            }
        },
    }
    data = {
        "date": "2026-11-30",
        "machine": {"threads": 1},
        "profiles": {"grpo": _profile(0.1)},
        "variant_profiles": {"new": {"grpo": _profile(0.1)}, "base": {"grpo": _profile(0.2)}},
        "comparison": comparison,
    }
    text = profile_step.render(data)
    assert "| selection |" in text and "12 / 0" in text and "**step**" in text
    assert "new / base" in text and "**100.0** / **200.0**" in text  # the variant table's step row
    assert "| grpo | 200.0 (**1.00**) / 200.0 (1.00) | 100.0 (**0.50**) / 150.0 (0.75) |" in text


def _fake_run(root: Path, adapter: bytes, loss: float, seconds: float) -> Path:
    checkpoint = root / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(adapter)
    (checkpoint / "algorithm_state.json").write_text("{}")
    torch.save(
        {"python": (3, (seconds,), None), "torch": torch.tensor([1, 2], dtype=torch.uint8)}, checkpoint / "rng_state.pt"
    )
    torch.save(
        {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1, "foreach": seconds > 1}]},
        checkpoint / "optimizer.pt",
    )
    records = [{"kind": "train", "step": 1, "loss": loss, "step_time_s": seconds, "peak_mem_mib": seconds}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "results.json").write_text(json.dumps({"eval_before": 0.5, "eval_after": 0.6, "steps": 2}))
    return root


def test_same_run_ignores_timings_and_names_real_differences(tmp_path):
    same_run = load_benchmark_script("same_run")
    a = _fake_run(tmp_path / "a", b"weights", 0.25, 1.0)
    b = _fake_run(tmp_path / "b", b"weights", 0.25, 2.0)  # other timings, memory, python RNG, foreach flag
    assert same_run.compare_runs(a, b) == []
    c = _fake_run(tmp_path / "c", b"weightz", 0.5, 1.0)
    diffs = same_run.compare_runs(a, c)
    assert any("adapter_model.safetensors" in d for d in diffs) and any("loss" in d for d in diffs)
