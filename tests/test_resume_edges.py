"""Resume edge cases that used to lose data or mislead: --overwrite with --resume, --steps below the
checkpoint, a decaying schedule extended into a sawtooth, a finished run resumed twice, a checkpoint of another
run continued into a used directory, an older checkpoint resumed next to newer ones, and damaged run files.

One real 4-step run (a checkpoint after every step) is copied for each test; refusals compare every byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trainer_helpers import HashRewardTrainer, small_config, snapshot
from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.run.checkpoint import CheckpointError
from tokrl.run.resume import ResumeError
from tokrl.trainer import Trainer

RUN = {"algorithm": "s-grpo", "steps": 4, "save_every": 1, "save_total_limit": 0}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("earlier")
    HashRewardTrainer(small_config(root, **RUN)).run()
    return root / "run"


@pytest.fixture
def run_copy(earlier_run, tmp_path) -> Path:
    shutil.copytree(earlier_run, tmp_path / "run")
    return tmp_path / "run"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if r["kind"] == "train"]


def checkpoint_names(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def test_overwrite_with_resume_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    for resume in (True, str(run_copy / "checkpoint-2")):
        with pytest.raises(ValueError, match="--overwrite and --resume contradict each other"):
            Trainer(small_config(run_copy.parent, **RUN, resume=resume, overwrite=True))
    assert main(["train", "--output-dir", str(run_copy), "--resume", "--overwrite"]) == EXIT_CONFIG_ERROR
    assert "contradict" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_steps_below_the_checkpoint_are_refused(run_copy, capsys):
    # Used to exit 0 "after 4 steps", ignoring the request.
    before = snapshot(run_copy)
    with pytest.raises(ResumeError, match=r"steps: 2 is below the step of .*checkpoint-4 \(4\)"):
        Trainer(small_config(run_copy.parent, **(RUN | {"steps": 2}), resume=True))
    assert main(["train", "--output-dir", str(run_copy), "--resume", "--steps", "2"]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "steps: 2 is below the step" in err and "Traceback" not in err
    assert snapshot(run_copy) == before


def test_a_decaying_schedule_is_not_restarted_by_more_steps(tmp_path):
    # Extending a linear schedule made the learning rate jump back up: a sawtooth.
    run = small_config(tmp_path, algorithm="grpo", steps=2, lr_scheduler="linear")
    HashRewardTrainer(run).run()
    before = snapshot(tmp_path / "run")
    with pytest.raises(ResumeError, match=r"steps: 2 -> 4 would restart the 'linear' learning-rate schedule"):
        Trainer(small_config(tmp_path, algorithm="grpo", steps=4, lr_scheduler="linear", resume=True))
    assert snapshot(tmp_path / "run") == before


def test_resuming_a_finished_run_changes_nothing(run_copy, capsys):
    # A bare --resume of a finished run appended a second "after" evaluation.
    before = snapshot(run_copy)
    results = json.loads(before.pop("results.json"))
    assert main(["train", "--output-dir", str(run_copy), "--resume"]) == 0
    assert "after 4 steps" in capsys.readouterr().out
    after = snapshot(run_copy)
    rewritten = json.loads(after.pop("results.json"))  # names this copy's checkpoint: the fixture's was elsewhere
    assert after == before and rewritten == results | {"checkpoint": str(run_copy / "checkpoint-4")}
    assert [r["when"] for r in records(run_copy) if r["kind"] == "eval"] == ["before", "after"]


def test_another_runs_checkpoint_into_a_used_dir(earlier_run, tmp_path):
    # `--resume OTHER/checkpoint-2 --output-dir USED` replaced USED's metrics and pointed results.json at a
    # checkpoint it pruned at once.
    other = earlier_run
    used = tmp_path / "run"
    HashRewardTrainer(small_config(tmp_path, algorithm="s-grpo", steps=3, seed=5)).run()
    before, other_before = snapshot(used), snapshot(other)
    resume = {**RUN, "steps": 3, "save_total_limit": 1, "resume": str(other / "checkpoint-2")}
    with pytest.raises(ValueError, match=r"already holds another run \(checkpoint-3, metrics.jsonl.*--overwrite"):
        Trainer(small_config(tmp_path, **resume))
    assert snapshot(used) == before
    result = HashRewardTrainer(small_config(tmp_path, **resume, overwrite=True)).run()
    assert snapshot(other) == other_before  # the source run is only read
    assert checkpoint_names(used) == ["checkpoint-3"] and result.checkpoint == used / "checkpoint-3"
    assert json.loads((used / "results.json").read_text())["checkpoint"] == str(used / "checkpoint-3")
    steps = train_steps(used)
    assert steps == [1, 2, 3]  # the source's history up to its step 2, then this run's step 3
    assert records(used)[:3] == records(other)[:3]  # eval before, steps 1 and 2 as the source logged them


def test_another_runs_checkpoint_into_a_new_dir_keeps_its_history(earlier_run, tmp_path):
    new = tmp_path / "branch"
    config = small_config(
        tmp_path, **(RUN | {"steps": 3}), resume=str(earlier_run / "checkpoint-2"), output_dir=str(new)
    )
    HashRewardTrainer(config).run()
    assert train_steps(new) == [1, 2, 3] and checkpoint_names(new) == ["checkpoint-3"]


def test_resuming_an_older_checkpoint_sets_newer_ones_aside(run_copy):
    # `--resume run/checkpoint-1 --steps 2 --save-total-limit 2` pruned the checkpoint it had just written
    # (checkpoints 3 and 4 were newer), and results.json named a missing folder.
    old_metrics = (run_copy / "metrics.jsonl").read_bytes()
    config = small_config(
        run_copy.parent, **(RUN | {"steps": 2, "save_total_limit": 2}), resume=str(run_copy / "checkpoint-1")
    )
    result = HashRewardTrainer(config).run()
    assert result.checkpoint == run_copy / "checkpoint-2" and result.checkpoint.is_dir()
    assert json.loads((run_copy / "results.json").read_text())["checkpoint"] == str(run_copy / "checkpoint-2")
    assert checkpoint_names(run_copy) == ["checkpoint-1", "checkpoint-2"]
    aside = run_copy / "superseded-1"
    assert checkpoint_names(aside) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert (aside / "metrics.jsonl").read_bytes() == old_metrics and (aside / "results.json").is_file()
    assert train_steps(run_copy) == [1, 2]
    # The directory holds one history again: a bare --resume continues the new branch, not the old step 4.
    assert (
        Trainer(small_config(run_copy.parent, **(RUN | {"steps": 2}), resume=True)).plan.checkpoint == result.checkpoint
    )


DAMAGED_METRICS = [
    (b"[1, 2]\n", "line 2 is not a metrics record"),
    (b'{"step": "x", "kind": "train"}\n', "line 2 is not a metrics record"),
    (b'{"step": 1, "kind": "train", "note": "\xff\xfe"}\n', "line 2 is not UTF-8 text"),
    (b'{"step": 1, "kind": \n', "line 2 is not valid JSON"),
]


@pytest.mark.parametrize(("line", "message"), DAMAGED_METRICS, ids=["list", "step-string", "non-utf8", "cut"])
def test_damaged_metrics_line_is_one_error_before_any_write(run_copy, capsys, line, message):
    path = run_copy / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + line + b"".join(lines[1:]))
    before = snapshot(run_copy)
    assert main(["train", "--output-dir", str(run_copy), "--resume"]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"metrics file {str(path)!r}, {message}" in err and "Traceback" not in err
    assert snapshot(run_copy) == before


def test_a_last_line_cut_short_by_a_crash_is_dropped(run_copy):
    path = run_copy / "metrics.jsonl"
    path.write_bytes(path.read_bytes() + b'{"kind": "train", "step": 5, "loss')
    HashRewardTrainer(small_config(run_copy.parent, **(RUN | {"steps": 5}), resume=True)).run()
    assert train_steps(run_copy) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("name", ["algorithm_state.json", "trainer_state.json"])
def test_run_state_that_is_not_an_object_is_one_error(run_copy, capsys, name):
    # algorithm_state.json holding [] raised deep inside the algorithm's load_state_dict.
    (run_copy / "checkpoint-4" / name).write_text("[]")
    before = snapshot(run_copy)
    assert main(["train", "--output-dir", str(run_copy), "--resume"]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert str(run_copy / "checkpoint-4" / name) in err and "Traceback" not in err
    assert snapshot(run_copy) == before
    with pytest.raises((CheckpointError, ResumeError), match=name):
        trainer = HashRewardTrainer(small_config(run_copy.parent, **RUN, resume=str(run_copy / "checkpoint-4")))
        trainer.setup()
