"""Resume checks what it resumes: meaning-changing fields refused (listing old -> new), safe fields applied
and recorded, `--resume` alone continues the checkpoint's own config, `--resume PATH`, incomplete and
corrupt checkpoints, leftovers of a killed save, a full disk while saving."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from tests.trainer_helpers import HashRewardTrainer, small_config, snapshot
from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.run.checkpoint import CheckpointError, save_checkpoint
from tokrl.run.resume import SAFE_TO_CHANGE, ResumeError, config_differences
from tokrl.trainer import Trainer, train

TINY_TASK = {"digits_a": 2, "digits_b": 1, "train_size": 8, "test_size": 4}  # small_config's task options


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("earlier")
    HashRewardTrainer(small_config(root, algorithm="s-grpo", save_every=1, save_total_limit=0)).run()
    return root / "run"


@pytest.fixture
def run_copy(earlier_run, tmp_path) -> Path:
    shutil.copytree(earlier_run, tmp_path / "run")
    return tmp_path / "run"


def test_meaning_changes_are_refused_listing_each(run_copy):
    before = snapshot(run_copy)
    changed = {"algorithm": "t-spmo", "lr": 0.5, "lora_r": 8, "seed": 7, "task_options": {**TINY_TASK, "digits_a": 3}}
    config = small_config(run_copy.parent, resume=True, **changed)
    with pytest.raises(ResumeError) as info:
        Trainer(config)
    message = str(info.value)
    for text in (
        "algorithm: 's-grpo' -> 't-spmo'",
        "lr: 0.01 -> 0.5",
        "lora_r: 16 -> 8",
        "seed: 0 -> 7",
        "'digits_a': 2",
        "'digits_a': 3",
        "--overwrite",
        "another --output-dir",
    ):
        assert text in message, (text, message)
    assert "steps" not in message.split("config;")[1].split("To continue")[0]  # unchanged fields are not listed
    assert snapshot(run_copy) == before


def test_safe_changes_are_applied_and_recorded(run_copy, caplog):
    config = small_config(run_copy.parent, algorithm="s-grpo", resume=True, steps=3, eval_every=1, log_every=1)
    with caplog.at_level(logging.INFO, logger="tokrl"):
        result = HashRewardTrainer(config).run()
    assert result.steps == 3 and not result.interrupted
    assert "resume: applying steps: 2 -> 3" in caplog.text
    saved = yaml.safe_load((run_copy / "checkpoint-3" / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["eval_every"] == 1 and saved["algorithm"] == "s-grpo"
    train = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["kind"] == "train"] == [1, 2, 3]


def test_safe_list_is_a_subset_of_the_fields():
    from tokrl.config import flat_fields

    assert SAFE_TO_CHANGE <= set(flat_fields())
    for key in ("algorithm", "task", "task_options", "model", "lora_r", "seed", "num_generations", "lr", "dtype"):
        assert key not in SAFE_TO_CHANGE


def test_config_differences_ignores_equal_values():
    a = small_config(Path("/tmp/x"))
    b = small_config(Path("/tmp/x"), lr=0.5)
    assert config_differences(a, a) == []
    assert config_differences(a, b) == [("lr", 0.01, 0.5)]


def test_resume_path_and_incomplete_newest_is_skipped(run_copy, caplog):
    (run_copy / "checkpoint-2" / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        trainer = Trainer(small_config(run_copy.parent, algorithm="s-grpo", resume=True))
    assert trainer.plan.checkpoint == run_copy / "checkpoint-1"
    assert "skipping incomplete" in caplog.text and "optimizer.pt" in caplog.text
    explicit = Trainer(small_config(run_copy.parent, algorithm="s-grpo", resume=str(run_copy / "checkpoint-1")))
    assert explicit.plan.checkpoint == run_copy / "checkpoint-1"
    with pytest.raises(ResumeError, match=r"checkpoint-2' is not a complete checkpoint \(missing or empty: optimizer"):
        Trainer(small_config(run_copy.parent, algorithm="s-grpo", resume=str(run_copy / "checkpoint-2")))


def test_truncated_checkpoint_file_names_it_and_the_previous_checkpoint(run_copy):
    adapter = run_copy / "checkpoint-2" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    trainer = HashRewardTrainer(small_config(run_copy.parent, algorithm="s-grpo", resume=True))
    with pytest.raises(CheckpointError) as info:
        trainer.setup()
    message = str(info.value)
    assert f"checkpoint file {adapter} is truncated or corrupt" in message
    assert f"--resume {run_copy / 'checkpoint-1'}" in message


def test_leftovers_of_a_killed_save_are_removed_on_resume(run_copy):
    leftovers = [run_copy / ".checkpoint-3.k1ll3d", run_copy / ".stale-checkpoint-2-123"]
    for path in leftovers:
        path.mkdir()
        (path / "optimizer.pt").write_bytes(b"half")
    HashRewardTrainer(small_config(run_copy.parent, algorithm="s-grpo", resume=True)).setup()
    assert not any(path.exists() for path in leftovers)
    assert (run_copy / "checkpoint-2" / "optimizer.pt").is_file()


def test_full_disk_while_saving_is_one_error_and_leaves_no_temp(tmp_path):
    class FullDisk:
        def save_pretrained(self, path):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=r"no space left on the device while saving .*checkpoint-3"):
        save_checkpoint(
            tmp_path,
            3,
            model=FullDisk(),
            optimizer=None,
            scheduler=None,
            trainer_state={},
            algorithm_state={},
            config={},
        )
    assert list(tmp_path.iterdir()) == []


CLI_TINY = [
    *"--sft-steps 0 --prompts-per-step 2 --num-generations 4 --max-new-tokens 4".split(),
    *"--eval-size 4 --eval-batch-size 4 --num-threads 1 --progress false".split(),
    "--task-options",
    "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
]


def test_cli_resume_alone_uses_the_checkpoints_config(tmp_path, capsys, caplog):
    # The README pair: a run with non-default flags, then `--resume` with only the output dir.
    out = str(tmp_path / "x")
    first = ["train", *CLI_TINY, "--algorithm", "s-grpo", "--steps", "1", "--output-dir", out, "--save-every", "1"]
    assert main(first) == 0
    capsys.readouterr()
    assert main(["train", "--output-dir", out, "--resume", "--steps", "2"]) == 0
    results = json.loads((tmp_path / "x" / "results.json").read_text())
    assert (results["algorithm"], results["steps"], results["task_options"]["train_size"]) == ("s-grpo", 2, 8)
    saved = yaml.safe_load((tmp_path / "x" / "checkpoint-2" / "config.yaml").read_text())
    assert saved["generation"]["num_generations"] == 4 and saved["steps"] == 2
    assert main(["train", "--output-dir", out, "--resume"]) == 0  # nothing left to do: same config, step 2
    # --resume PATH without --output-dir continues in the checkpoint's run directory, from that step.
    first_adapter = (tmp_path / "x" / "checkpoint-1" / "adapter_model.safetensors").read_bytes()
    resume_one = ["train", "--resume", str(tmp_path / "x" / "checkpoint-1"), "--steps", "2", "--save-total-limit", "0"]
    assert main(resume_one) == 0
    assert f"resumed from {tmp_path / 'x' / 'checkpoint-1'} at step 1" in caplog.text
    assert (tmp_path / "x" / "checkpoint-1" / "adapter_model.safetensors").read_bytes() == first_adapter
    assert json.loads((tmp_path / "x" / "results.json").read_text())["steps"] == 2
    before = snapshot(tmp_path / "x")
    capsys.readouterr()
    assert main(["train", "--output-dir", out, "--resume", "--algorithm", "t-spmo"]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "algorithm: 's-grpo' -> 't-spmo'" in err and "Traceback" not in err
    assert snapshot(tmp_path / "x") == before


def test_api_train_resume_uses_the_checkpoints_config(run_copy):
    # `train(resume=True, output_dir=...)` with the preset's defaults would be t-spmo on 3x1 digits: the
    # checkpoint's config (s-grpo, 2x1) wins because only the given overrides are re-applied.
    result = train(resume=True, output_dir=str(run_copy), progress=False, steps=3)
    assert result.steps == 3
    saved = yaml.safe_load((run_copy / "checkpoint-3" / "config.yaml").read_text())
    assert saved["algorithm"] == "s-grpo" and saved["task_options"] == TINY_TASK


def test_a_run_started_with_overwrite_resumes(tmp_path, capsys):
    """`--overwrite` is how one invocation treats the folder, not part of the run: `--resume` alone continues it."""
    out = str(tmp_path / "x")
    first = ["train", *CLI_TINY, "--steps", "1", "--save-every", "1", "--output-dir", out, "--overwrite"]
    assert main(first) == 0
    capsys.readouterr()
    assert main(["train", "--output-dir", out, "--resume", "--steps", "2"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "x" / "results.json").read_text())["steps"] == 2
    assert main(["train", "--output-dir", out, "--resume", "--overwrite", "--steps", "3"]) == EXIT_CONFIG_ERROR
    assert "contradict each other" in capsys.readouterr().err  # both flags given in one call still contradict
