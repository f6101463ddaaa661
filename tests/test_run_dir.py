"""An earlier run is never destroyed: bad values fail before output_dir is touched, a fresh run into a run's
directory is refused without --overwrite, and --overwrite removes the old run only once the new one started.

One real 2-step run (module fixture) is copied for each test; every check compares every byte of it.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

import tokrl.run.run_dir as run_dir
import tokrl.trainer as trainer_module
from tests.trainer_helpers import HashRewardTrainer, small_config, snapshot
from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.config import load_config
from tokrl.run.warm_start import sft_stage
from tokrl.trainer import Trainer


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("earlier")
    HashRewardTrainer(small_config(root, algorithm="grpo", save_every=1, save_total_limit=0)).run()
    out = root / "run"
    assert {"checkpoint-1", "checkpoint-2", "metrics.jsonl", "results.json"} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture
def run_copy(earlier_run, tmp_path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "run"
    shutil.copytree(earlier_run, out)
    return out, snapshot(out)


# Values that pass the type parser but used to crash after the model loaded (and after the old run was
# deleted): each must fail at once, naming its field, even with --overwrite.
BAD_VALUES = [
    (["--eps-low", "1.5"], "eps_low: must be in [0, 1)"),
    (["--eps-high", "1"], "eps_high: must be in [0, 1)"),
    (["--lr", "inf"], "lr: must be a finite number, got inf"),
    (["--lora-alpha", "nan"], "lora_alpha: must be a finite number, got nan"),
    (["--temperature", "inf"], "temperature: must be a finite number, got inf"),
    (["--max-grad-norm", "nan"], "max_grad_norm: must be a finite number, got nan"),
    (["--max-tokens", "0"], "max_tokens: must be >= 1"),
    (["--device", "gpu0"], "device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"),
    (["--max-empty-steps", "-1"], "max_empty_steps: must be >= 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[a[0].lstrip("-") for a, _ in BAD_VALUES])
def test_bad_values_fail_before_the_earlier_run_is_touched(run_copy, capsys, args, message):
    out, before = run_copy
    code = main(["train", "--output-dir", str(out), "--overwrite", *args])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG_ERROR and message in err and "Traceback" not in err
    assert snapshot(out) == before


def test_impl_triton_on_cpu_without_interpreter_fails_first(run_copy, capsys, monkeypatch):
    pytest.importorskip("triton", reason="the check needs triton installed to get past 'not installed'")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out, before = run_copy
    code = main(["train", "--output-dir", str(out), "--overwrite", "--device", "cpu", "--impl", "triton"])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG_ERROR and "impl='triton': tensors are on cpu" in err and "TRITON_INTERPRET=1" in err
    assert snapshot(out) == before


def test_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    import torch

    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    code = main(["train", "--output-dir", str(tmp_path / "x"), "--device", device])
    err = capsys.readouterr().err
    expected = "CUDA device(s) are visible" if torch.cuda.is_available() else "CUDA is not available"
    assert code == EXIT_CONFIG_ERROR and f"device: {device!r}" in err and expected in err


def test_fresh_run_into_a_run_is_refused_and_leaves_it_alone(run_copy):
    out, before = run_copy
    config = small_config(out.parent, algorithm="grpo")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint-1, checkpoint-2, metrics.jsonl") as info:
        Trainer(config)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)
    assert snapshot(out) == before


def test_overwrite_keeps_the_old_run_until_setup_succeeded(run_copy, monkeypatch):
    out, before = run_copy

    def broken_load(*args, **kwargs):
        raise OSError("disk went away while loading the model")

    monkeypatch.setattr(trainer_module, "load_model", broken_load)
    trainer = HashRewardTrainer(small_config(out.parent, algorithm="grpo", overwrite=True, seed=3))
    assert snapshot(out) == before  # constructing (all checks) changes nothing
    with pytest.raises(OSError, match="disk went away"):
        trainer.setup()
    assert snapshot(out) == before


def test_overwrite_replaces_the_earlier_run_once_started(run_copy):
    out, before = run_copy
    (out / ".checkpoint-7.abc123").mkdir()  # a killed save's leftover
    trainer = HashRewardTrainer(small_config(out.parent, algorithm="grpo", overwrite=True, seed=3, steps=1))
    trainer.setup()
    assert not (out / "checkpoint-2").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / ".checkpoint-7.abc123").exists()
    trainer.run()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "adapter_model.safetensors").read_bytes() != before[
        "checkpoint-1/adapter_model.safetensors"
    ]


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    code = main(["train", "--output-dir", str(target)])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG_ERROR and f"output_dir: {str(target)!r} is a file" in err
    assert target.read_text() == "not a directory"
    code = main(["train", "--output-dir", str(target / "sub")])
    assert code == EXIT_CONFIG_ERROR and "is a file, so" in capsys.readouterr().err


def test_output_dir_not_writable(tmp_path, capsys, monkeypatch):
    # Root may write anywhere a chmod forbids, so the read-only mount is simulated at the probe file.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_dir.tempfile, "TemporaryFile", read_only)
    code = main(["train", "--output-dir", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG_ERROR and "is not writable (Read-only file system)" in err
    assert not (tmp_path / "new").exists()


def test_resume_without_a_complete_checkpoint_is_refused_and_deletes_nothing(run_copy, capsys):
    # Used to restart from step 0 and rewrite metrics.jsonl.
    out, _ = run_copy
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        (out / checkpoint / "optimizer.pt").unlink()
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"resume: no complete checkpoint in .*only incomplete ones: checkpoint-1, "):
        HashRewardTrainer(small_config(out.parent, algorithm="grpo", resume=True))
    assert main(["train", "--output-dir", str(out), "--resume"]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"resume: no complete checkpoint in {str(out)!r}" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_overwrite_rebuilds_a_warm_start_made_with_other_settings(tmp_path):
    config = small_config(tmp_path, sft_steps=2, sft_batch_size=4)
    trainer = Trainer(config)
    path = sft_stage(config, trainer.task, trainer.output_dir, trainer.device, log=lambda m: None)
    old_weights = (path / "model.safetensors").read_bytes()
    changed = load_config(base=config, sft_steps=3)
    with pytest.raises(ValueError, match="different settings .* pass --overwrite"):
        sft_stage(changed, trainer.task, trainer.output_dir, trainer.device)
    assert (path / "model.safetensors").read_bytes() == old_weights  # refused: untouched
    messages: list[str] = []
    pending = sft_stage(changed, trainer.task, trainer.output_dir, trainer.device, log=messages.append, replace=True)
    assert "--overwrite rebuilds it" in messages[0]
    assert pending != path and (path / "model.safetensors").read_bytes() == old_weights  # not swapped in yet
    run_dir.RunPlan(trainer.output_dir, pending_sft=pending).clear_earlier_run()  # the new run has started
    assert json.loads((path / "sft_config.json").read_text())["settings"]["sft_steps"] == 3
    assert (path / "model.safetensors").read_bytes() != old_weights
    assert not pending.exists() and [p.name for p in trainer.output_dir.iterdir()] == ["sft"]
