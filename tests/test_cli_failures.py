"""Failures that used to end in a traceback end in one line: a full disk while saving a checkpoint
(torch reports it as a RuntimeError "unexpected pos", so the promised one-line error never fired), also on a
resumed run and while the resumed run replaces its metrics; Ctrl-C during the warm start and during training;
a binary --config file."""

from __future__ import annotations

import errno
import json

import pytest
import torch

import tokrl.run.checkpoint as checkpoint_module
import tokrl.run.metrics_log as metrics_module
import tokrl.run.warm_start as sft_module
from tokrl.cli import EXIT_CONFIG_ERROR, EXIT_INTERRUPTED, main
from tokrl.trainer import Trainer

TINY = [
    *"--sft-steps 0 --prompts-per-step 2 --num-generations 4 --max-new-tokens 4".split(),
    *"--eval-size 4 --eval-batch-size 4 --num-threads 1 --progress false --algorithm grpo".split(),
    "--task-options",
    "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
]
# What torch.save raises when the disk fills up in the middle of a file.
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 6016 vs 5908"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture
def fill_the_disk(monkeypatch):
    """From the call on, torch.save of a checkpoint's optimizer.pt fails as on a full disk."""
    real = torch.save

    def save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise RuntimeError(TORCH_FULL_DISK)
        return real(obj, path, *args, **kwargs)

    return lambda: monkeypatch.setattr(checkpoint_module.torch, "save", save)


def test_full_disk_while_saving_is_one_line(tmp_path, capsys, fill_the_disk):
    out = tmp_path / "run"
    fill_the_disk()
    assert main(["train", *TINY, "--steps", "1", "--output-dir", str(out)]) == 1
    line = _one_line(capsys)
    assert f"no space left on the device while saving {out / 'checkpoint-1'}" in line
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the half checkpoint is gone


def test_full_disk_on_a_resumed_run(tmp_path, capsys, fill_the_disk):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--output-dir", str(out)]) == 0
    fill_the_disk()
    assert main(["train", "--output-dir", str(out), "--resume", "--steps", "2"]) == 1
    line = _one_line(capsys)
    assert "no space left on the device while saving" in line and f"{out / 'checkpoint-1'} is intact" in line


def test_full_disk_while_a_resume_replaces_its_metrics(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--save-every", "1", "--output-dir", str(out)]) == 0
    (out / "checkpoint-2" / "optimizer.pt").unlink()  # resume checkpoint-1: metrics.jsonl must be cut back

    def full(path, lines):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(metrics_module, "write_lines_atomic", full)
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["train", "--output-dir", str(out), "--resume"]) == 1
    line = _one_line(capsys)
    assert f"no space left on the device while writing {out / 'metrics.jsonl'}" in line
    assert (out / "metrics.jsonl").read_bytes() == before


def test_ctrl_c_during_the_warm_start(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sft_module, "supervised_warm_start", interrupted)
    out = tmp_path / "run"
    args = ["train", *TINY, "--sft-steps", "3", "--sft-batch-size", "4", "--steps", "1", "--output-dir", str(out)]
    assert main(args) == EXIT_INTERRUPTED
    assert "interrupted before training started; nothing of this run was kept" in _one_line(capsys)
    assert not out.exists()


def test_second_ctrl_c_during_training(tmp_path, capsys, monkeypatch):
    real = Trainer.train_step

    def step(self, index):
        if index == 1:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(Trainer, "train_step", step)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "3", "--save-every", "1", "--output-dir", str(out)]) == EXIT_INTERRUPTED
    line = _one_line(capsys)
    assert f"interrupted during step 2; continue from the last checkpoint in {out} with --resume" in line
    assert not (out / ".tokrl-lock").exists()


def test_binary_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "o")]) == EXIT_CONFIG_ERROR
    assert f"config: {str(config)!r} is not a text YAML file (byte 0x89 at offset 0" in _one_line(capsys)


def test_unreachable_dataset_name_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    options = json.dumps({"dataset": "someone/no-such-dataset-anywhere", "reward": "exact_match"})
    args = ["train", "--task", "custom", "--task-options", options, "--output-dir", str(tmp_path / "o")]
    assert main(args) == EXIT_CONFIG_ERROR
    line = _one_line(capsys)
    assert "could not load dataset 'someone/no-such-dataset-anywhere'" in line and "pass a local path" in line
