"""Reporters: TensorBoard event files match metrics.jsonl (also across a crash and --resume), wandb gets every
record under one run id, and missing optional packages fail before any weights load with the extra's name."""

from __future__ import annotations

import json
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.trainer_helpers import HashRewardTrainer, small_config
from tokrl.cli import EXIT_CONFIG_ERROR, build_parser, main
from tokrl.config import load_config
from tokrl.infra.extras import MissingExtraError
from tokrl.infra.reporting import TENSORBOARD_DIR, WandbReporter, available_reporters
from tokrl.trainer import Trainer


class CrashingTrainer(HashRewardTrainer):
    """Dies (an exception, as a killed process would stop) right after step `crash_at`, past its last checkpoint."""

    crash_at = 3

    def train_step(self, step):
        if step == self.crash_at:  # step crash_at (1-based) is done, logged and saved: the next one dies
            raise RuntimeError("simulated crash")
        return super().train_step(step)


def jsonl_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from metrics.jsonl: every logged number, tagged "<kind>/<key>"."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("step", "kind", "when") and value is not None:
                out.setdefault(f"{record['kind']}/{key}", []).append((record["step"], float(value)))
    return out


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (restart markers applied, every event kept)."""
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same(tensorboard, jsonl):
    assert sorted(tensorboard) == sorted(jsonl)
    for tag, points in jsonl.items():
        assert [s for s, _ in tensorboard[tag]] == [s for s, _ in points], tag
        assert [v for _, v in tensorboard[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_tensorboard_matches_metrics_across_a_crash_and_resume(tmp_path):
    overrides = {"algorithm": "grpo", "steps": 4, "save_every": 2, "eval_every": 2, "report_to": "tensorboard"}
    crashed = CrashingTrainer(small_config(tmp_path, **overrides))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.run()
    run = crashed.output_dir
    before = jsonl_scalars(run)
    assert [s for s, _ in before["train/loss"]] == [1, 2, 3]  # step 3 was logged after checkpoint-2
    assert [s for s, _ in before["eval/accuracy"]] == [0, 2]
    assert_same(tensorboard_scalars(run), before)  # flushed per record: nothing lost in the crash

    HashRewardTrainer(small_config(tmp_path, resume=True, **overrides)).run()
    after = jsonl_scalars(run)
    assert [s for s, _ in after["train/loss"]] == [1, 2, 3, 4]  # metrics.jsonl dropped the crashed step 3
    assert [s for s, _ in after["eval/accuracy"]] == [0, 2, 4]
    assert after["train/step_time_s"][2] != before["train/step_time_s"][2], "step 3 must be the resumed process's"
    assert len(list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2  # the same run, appended
    assert_same(tensorboard_scalars(run), after)

    fresh = overrides | {"steps": 1, "save_every": 0, "overwrite": True}  # a new run replacing the old one
    HashRewardTrainer(small_config(tmp_path, **fresh)).run()
    assert_same(tensorboard_scalars(run), jsonl_scalars(run))
    assert [s for s, _ in jsonl_scalars(run)["train/loss"]] == [1]


def test_no_reporter_by_default_and_none_on_other_ranks(tmp_path, monkeypatch):
    HashRewardTrainer(small_config(tmp_path / "default", steps=1)).run()
    assert not (tmp_path / "default" / "run" / TENSORBOARD_DIR).exists()

    import tokrl.trainer

    monkeypatch.setattr(tokrl.trainer.distributed, "is_main", lambda: False)
    HashRewardTrainer(small_config(tmp_path / "rank1", steps=1, report_to="tensorboard")).run()
    assert not (tmp_path / "rank1" / "run" / TENSORBOARD_DIR).exists()


def test_report_to_config_and_flag(tmp_path):
    assert load_config(report_to="tensorboard,wandb").report_to == ["tensorboard", "wandb"]
    assert load_config().report_to == ["none"]
    assert available_reporters() == ["none", "tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"report_to: unknown 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        load_config(report_to="tensorbord")
    with pytest.raises(ValueError, match="report_to: 'none' cannot be combined with a reporter"):
        load_config(report_to="none,wandb")
    args, _ = build_parser().parse_known_args(["train", "--report-to", "tensorboard,wandb"])
    assert args.report_to == "tensorboard,wandb"


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_missing_package_fails_before_weights_load(tmp_path, monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if the package were not installed
    with pytest.raises(MissingExtraError, match=rf"report_to: '{package}' needs the '{package}' package"):
        Trainer(small_config(tmp_path, report_to=package))
    code = main(["train", "--report-to", package, "--output-dir", str(tmp_path / "cli"), "--sft-steps", "0"])
    assert code == EXIT_CONFIG_ERROR
    assert f"pip install 'tokrl[{package}]'" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_wandb_reporter_logs_every_record_under_one_run_id(tmp_path, monkeypatch):
    inits, logs, finished = [], [], []
    run = types.SimpleNamespace(log=lambda data, step: logs.append((data, step)), finish=lambda: finished.append(1))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: inits.append(kwargs) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")

    reporter = WandbReporter(tmp_path, config={"algorithm": "grpo"}, resume_step=0)
    reporter.log({"kind": "train", "step": 1, "reward_mean": 0.5, "kl": None, "selected_tokens": 7})
    reporter.log({"kind": "eval", "step": 1, "when": "after", "accuracy": 0.25, "n": 4})
    reporter.close()
    assert logs == [
        ({"train/reward_mean": 0.5, "train/selected_tokens": 7.0}, 1),
        ({"eval/accuracy": 0.25, "eval/n": 4.0}, 1),
    ]
    assert finished == [1]
    first = inits[0]
    assert first["resume"] == "allow" and "mode" not in first  # wandb itself reads WANDB_MODE
    assert first["config"] == {"algorithm": "grpo"} and first["dir"] == str(tmp_path)

    WandbReporter(tmp_path, config={}, resume_step=2)  # --resume continues the same wandb run
    WandbReporter(tmp_path, config={}, resume_step=0)  # a fresh run starts a new one
    assert inits[1]["id"] == first["id"] and inits[2]["id"] != first["id"]
