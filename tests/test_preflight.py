"""Every option is checked before anything is written: LoRA targets and the prompt/context budget
used to be checked after the warm start had written output_dir/sft, and a failed --overwrite replaced the
earlier run's warm start while keeping its checkpoints (a later --resume was refused, and `tokrl eval` on an
old adapter silently used the new base)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import tokrl.trainer as trainer_module
from tests.trainer_helpers import HashRewardTrainer, small_config, snapshot
from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.run.preflight import check_model_options
from tokrl.tasks import get_task

TINY = [
    *"--sft-steps 2 --sft-batch-size 4 --steps 1 --prompts-per-step 2".split(),
    *"--num-generations 4 --max-new-tokens 4 --eval-size 4 --progress false".split(),
    *"--num-threads 1 --task-options".split(),
    "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-target-modules", "nope_proj"], "lora_target_modules: "),
        (["--lora-target-modules", "lm_head"], "lora_target_modules: refusing to adapt the LM head"),
        (["--max-new-tokens", "2047"], "prompt too long"),
        (["--max-new-tokens", "2048"], "max_new_tokens: 2048 leaves no room for a prompt"),
    ],
    ids=["unknown-target", "lm-head", "prompt-too-long", "no-room"],
)
def test_model_options_fail_before_the_warm_start_writes(tmp_path, capsys, args, message):
    out = tmp_path / "new"
    assert main(["train", *TINY, "--output-dir", str(out), *args]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert message in err and args[-1] in err and "Traceback" not in err
    assert not out.exists()  # no sft/, no lock, not even the folder


@pytest.fixture(scope="module")
def run_with_warm_start(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    assert main(["train", *TINY, "--output-dir", str(root / "run")]) == 0
    return root / "run"


def test_failed_overwrite_leaves_the_warm_start(run_with_warm_start, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_with_warm_start, out)
    before = snapshot(out)
    changed = ["--sft-steps", "3", "--overwrite", "--max-new-tokens", "2047"]  # a new warm start, then a bad option
    assert main(["train", *TINY, "--output-dir", str(out), *changed]) == EXIT_CONFIG_ERROR
    assert "prompt too long" in capsys.readouterr().err
    assert snapshot(out) == before


def test_overwrite_failing_after_the_warm_start_keeps_the_old_one(run_with_warm_start, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(run_with_warm_start, out)
    before = snapshot(out)

    def broken_load(*args, **kwargs):
        raise OSError("disk went away while loading the policy")

    monkeypatch.setattr(trainer_module, "load_model", broken_load)  # the warm start's own load still works
    config = small_config(tmp_path, sft_steps=3, sft_batch_size=4, overwrite=True, steps=1)
    with pytest.raises(OSError, match="disk went away"):
        HashRewardTrainer(config).setup()
    assert snapshot(out) == before  # the rebuilt warm start was set up beside it, then removed


def test_overwrite_swaps_the_new_warm_start_in_and_adapters_name_it(run_with_warm_start, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_with_warm_start, out)
    old = (out / "sft" / "model.safetensors").read_bytes()
    result = HashRewardTrainer(small_config(tmp_path, sft_steps=3, sft_batch_size=4, overwrite=True, steps=1)).run()
    assert (out / "sft" / "model.safetensors").read_bytes() != old
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # nothing pending or stale left
    config = (result.checkpoint / "adapter_config.json").read_text()
    assert f'"base_model_name_or_path": "{out / "sft"}"' in config


def test_the_check_draws_nothing_from_the_run_random_streams(tmp_path):
    config = small_config(tmp_path)
    task = get_task(config.task, **config.task_options)
    state = torch.get_rng_state()
    assert check_model_options(config, task)
    assert torch.equal(state, torch.get_rng_state())
