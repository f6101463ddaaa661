"""The warm start's accuracy target (`sft_target_accuracy`): it stops at the first check that reaches the target,
its checks draw no randomness (a run with the target is the run without it, cut short), the cache key carries
the target only when one is set, and the config refuses values outside [0, 1]."""

from __future__ import annotations

import json

import pytest
import torch

from tokrl.config import load_config
from tokrl.models.loading import load_model
from tokrl.run.warm_start import accuracy_target, sft_settings, sft_stage
from tokrl.stages.evaluate import evaluate
from tokrl.stages.warm_start import AccuracyTarget, supervised_warm_start
from tokrl.tasks import get_task

STEPS = 12


@pytest.fixture(scope="module")
def task():
    return get_task("multiplication", digits_a=2, digits_b=1)


def warm_start(task, target: AccuracyTarget | None, seed: int = 0):
    torch.manual_seed(seed)
    model, tokenizer = load_model("tiny", dtype="float32", device="cpu")
    log = supervised_warm_start(model, tokenizer, task, steps=STEPS, lr=3e-3, batch_size=8, seed=seed, target=target)
    return model, log


def test_checks_draw_no_randomness(task):
    """An unreachable target checks every 3 steps and changes nothing: same losses, same weights."""
    plain_model, plain = warm_start(task, None)
    checked_model, checked = warm_start(task, AccuracyTarget(accuracy=1.0, every=3, size=16, max_new_tokens=4))
    assert [step for step, _ in checked.checks] == [3, 6, 9]  # none at the last step: the run ends there anyway
    assert all(0.0 <= acc <= 1.0 for _, acc in checked.checks)
    assert checked.losses == plain.losses
    for (name, a), (_, b) in zip(plain_model.named_parameters(), checked_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_stops_at_the_first_check_that_reaches_the_target(task, monkeypatch):
    seen = iter([0.1, 0.45, 0.5, 0.9])
    monkeypatch.setattr(AccuracyTarget, "check", lambda self, model, tokenizer, task: next(seen))
    _, plain = warm_start(task, None)
    _, stopped = warm_start(task, AccuracyTarget(accuracy=0.5, every=2, size=16, max_new_tokens=4))
    assert stopped.checks == [(2, 0.1), (4, 0.45), (6, 0.5)]
    assert stopped.steps == 6 and stopped.losses == plain.losses[:6]


def test_check_is_greedy_accuracy_on_the_first_training_examples(task):
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny", dtype="float32", device="cpu")
    target = AccuracyTarget(accuracy=0.5, every=1, size=8, max_new_tokens=4)
    want = evaluate(model, task, tokenizer=tokenizer, split="train", limit=8, max_new_tokens=4)["accuracy"]
    assert target.check(model, tokenizer, task) == want
    model.train()
    target.check(model, tokenizer, task)
    assert model.training  # the mode it was in


def test_settings_carry_the_target_only_when_set(tmp_path):
    plain = load_config(output_dir=str(tmp_path), sft_steps=4, sft_target_accuracy=0.0)
    assert "sft_target_accuracy" not in sft_settings(plain)  # warm starts cached before the option stay valid
    assert accuracy_target(plain) is None
    aimed = load_config(base=plain, sft_target_accuracy=0.4, sft_check_every=7, sft_check_size=32)
    assert accuracy_target(load_config(output_dir=str(tmp_path))).accuracy == 0.5  # the default preset aims
    settings = sft_settings(aimed)
    assert (settings["sft_target_accuracy"], settings["sft_check_every"], settings["sft_check_size"]) == (0.4, 7, 32)
    target = accuracy_target(aimed)
    assert (target.accuracy, target.every, target.size) == (0.4, 7, 32)
    assert target.max_new_tokens == aimed.generation.max_new_tokens and target.sampler == aimed.generation.sampler
    merged = accuracy_target(load_config(base=aimed, sampler="tokrl-merged"))
    assert merged.sampler == "tokrl"  # the warm start's model has no adapter to merge


def test_stage_records_checks_and_stops(tmp_path, task, monkeypatch):
    monkeypatch.setattr(AccuracyTarget, "check", lambda self, model, tokenizer, task: 1.0)
    config = load_config(
        output_dir=str(tmp_path),
        task="multiplication",
        task_options={"digits_a": 2, "digits_b": 1},
        sft_steps=10,
        sft_batch_size=4,
        sft_target_accuracy=0.3,
        sft_check_every=4,
    )
    messages: list[str] = []
    path = sft_stage(config, task, tmp_path, torch.device("cpu"), log=messages.append)
    record = json.loads((path / "sft_config.json").read_text())
    assert record["checks"] == [[4, 1.0]] and len(record["losses"]) == 4
    assert record["settings"]["sft_target_accuracy"] == 0.3
    assert any("4 of 10 steps (check accuracy 1.000)" in m for m in messages)


@pytest.mark.parametrize(
    ("key", "value"),
    [("sft_target_accuracy", 1.5), ("sft_target_accuracy", -0.1), ("sft_check_every", 0), ("sft_check_size", 0)],
)
def test_config_refuses_bad_values(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        load_config(output_dir=str(tmp_path), **{key: value})
