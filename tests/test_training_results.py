"""benchmarks/training_results.py: finished run directories -> the collected JSON and the README table."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from tests.utils import load_benchmark_script


@pytest.fixture(scope="module")
def collect():
    return load_benchmark_script("training_results")


def _fake_run(
    root: Path,
    algorithm: str,
    before: float,
    after: float,
    seed: int = 0,
    wall: float = 12.3,
    name: str = "",
    threads: int = 2,
) -> Path:
    run = root / (name or algorithm)
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "config.yaml").write_text(
        yaml.safe_dump(
            {"prompts_per_step": 4, "generation": {"num_generations": 2}, "seed": seed, "num_threads": threads}
        )
    )
    records = [
        {"kind": "eval", "step": 0, "accuracy": before},
        {
            "kind": "train",
            "step": 1,
            "selected_tokens": 3,
            "completion_len": 5.0,
            "frac_zero_std": 0.5,
            "step_time_s": 0.1,
        },
        {
            "kind": "train",
            "step": 2,
            "selected_tokens": 5,
            "completion_len": 4.0,
            "frac_zero_std": 0.25,
            "step_time_s": 0.3,
        },
        {"kind": "eval", "step": 2, "accuracy": after},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = {"algorithm": algorithm, "eval_before": before, "eval_after": after, "wall_time_s": wall, "steps": 2}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_summary_keeps_results_and_averages_the_steps(collect, tmp_path):
    run = collect.summarise_run(_fake_run(tmp_path, "t-spmo", 0.25, 0.5))
    assert run["eval_before"] == 0.25 and run["eval_after"] == 0.5 and run["wall_time_s"] == 12.3
    assert run["mean_selected_tokens_per_step"] == pytest.approx(4.0)
    assert run["mean_generated_tokens_per_step"] == pytest.approx(4.5 * 8)  # mean length x 4 prompts x 2
    assert run["mean_frac_zero_std"] == pytest.approx(0.375)
    assert run["median_step_time_s"] == pytest.approx(0.2)
    assert run["eval_curve"] == [{"step": 0, "accuracy": 0.25}, {"step": 2, "accuracy": 0.5}]


def test_table_and_json_from_the_command_line(collect, tmp_path, capsys):
    runs = [_fake_run(tmp_path, "t-spmo", 0.25, 0.5), _fake_run(tmp_path, "grpo", 0.25, 0.375)]
    out = tmp_path / "collected.json"
    assert collect.main([str(r) for r in runs] + ["--out", str(out), "--note", "test"]) == 0
    table = capsys.readouterr().out
    assert "| t-spmo | 25.0% → 50.0% | +25.0 points | 4 of 36 | 12 s |" in table
    assert "| grpo | 25.0% → 37.5% | +12.5 points |" in table
    data = json.loads(out.read_text())
    assert [r["algorithm"] for r in data["runs"]] == ["t-spmo", "grpo"] and data["note"] == "test"


def test_unfinished_run_is_named(collect, tmp_path):
    run = _fake_run(tmp_path, "s-grpo", 0.1, 0.2)
    (run / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="results.json is missing.*finished `tokrl train`"):
        collect.summarise_run(run)


def test_seeds_give_a_spread_table(collect, tmp_path, capsys):
    runs = [
        _fake_run(tmp_path, "t-spmo", 0.5, 0.7, seed=0, wall=100, name="a"),
        _fake_run(tmp_path, "t-spmo", 0.4, 0.55, seed=1, wall=120, name="b"),
        _fake_run(tmp_path, "t-spmo", 0.45, 0.65, seed=2, wall=90, name="c"),
        _fake_run(tmp_path, "grpo", 0.5, 0.75, seed=0, wall=200, name="d"),
        _fake_run(tmp_path, "t-spmo", 0.5, 0.6, seed=0, wall=150, name="e", threads=1),
    ]
    sft = runs[0] / "sft"
    sft.mkdir()
    (sft / "sft_config.json").write_text(json.dumps({"losses": [2.0, 1.5, 1.0], "seconds": 4.5}))
    assert collect.main([str(r) for r in runs]) == 0
    table = capsys.readouterr().out
    assert (
        "| t-spmo | 2 | 0, 1, 2 | 40.0% / 45.0% / 50.0% | 55.0% / 65.0% / 70.0% | "
        "+15.0 points / +20.0 points / +20.0 points | 90 s / 100 s / 120 s |" in table
    )
    assert "| grpo | 2 | 0 | 50.0% / 50.0% / 50.0% |" in table
    assert "| t-spmo | 1 | 0 | 50.0% / 50.0% / 50.0% | 60.0% / 60.0% / 60.0% | +10.0 points" in table  # its own row
    packed = runs[0] / "metrics.jsonl"
    packed.with_name("metrics.jsonl.gz").write_bytes(gzip.compress(packed.read_bytes()))
    packed.unlink()  # committed runs keep their metrics gzipped
    first = collect.summarise_run(runs[0])
    assert (first["seed"], first["num_threads"]) == (0, 2)
    assert (first["warm_start_steps"], first["warm_start_seconds"]) == (3, 4.5)
    assert "warm_start_steps" not in collect.summarise_run(runs[1])


def test_labelled_runs_get_their_own_rows(collect, tmp_path, capsys):
    runs = [
        _fake_run(tmp_path, "t-spmo", 0.5, 0.7, seed=0, name="t-spmo-s0"),
        _fake_run(tmp_path, "t-spmo", 0.4, 0.6, seed=1, name="t-spmo-s1"),
        _fake_run(tmp_path, "t-spmo", 0.5, 0.6, seed=0, name="t-spmo-s0-avx2"),
    ]
    out = tmp_path / "collected.json"
    assert collect.main([str(r) for r in runs] + ["--label", "*-avx2=AVX2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| algorithm | threads | label | seeds |" in table
    assert "| t-spmo | 2 | - | 0, 1 | 40.0% / 45.0% / 50.0% |" in table
    assert "| t-spmo | 2 | AVX2 | 0 | 50.0% / 50.0% / 50.0% | 60.0% / 60.0% / 60.0% |" in table
    assert [r.get("label") for r in json.loads(out.read_text())["runs"]] == [None, None, "AVX2"]
    with pytest.raises(SystemExit):
        collect.main([str(runs[0]), "--label", "no-equals-sign"])
