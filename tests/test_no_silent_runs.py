"""Runs that would train nothing say so: all-None rewards warn, steps without a trainable token stop the
run after max_empty_steps, and prompts longer than the model's context are refused before training."""

from __future__ import annotations

import json
import logging

import pytest

from tests.trainer_helpers import ConstantRewardTrainer, HashRewardTrainer, small_config
from tokrl.models.tiny import build_tiny_model, tiny_config
from tokrl.run.context import check_prompt_lengths
from tokrl.run.progress import StalledRunError
from tokrl.tasks import get_task


def test_steps_without_trainable_tokens_stop_the_run(tmp_path):
    trainer = ConstantRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=6, max_empty_steps=2))
    with pytest.raises(StalledRunError, match=r"no trainable token in the last 2 steps .*step 2.*max-empty-steps"):
        trainer.run()
    assert trainer.step == 2  # stopped at once, not after all 6 steps
    records = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["selected_tokens"]) for r in records if r["kind"] == "train"] == [(1, 0), (2, 0)]


def test_max_empty_steps_zero_never_stops(tmp_path):
    result = ConstantRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=3, max_empty_steps=0)).run()
    assert result.steps == 3 and result.metrics["selected_tokens"] == 0


def test_all_none_rewards_warn_every_step(tmp_path, caplog):
    trainer = ConstantRewardTrainer(small_config(tmp_path, algorithm="s-grpo", steps=2, max_empty_steps=0))
    trainer.value = None
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        trainer.run()
    warnings = [r.getMessage() for r in caplog.records if "returned None for every completion" in r.message]
    assert [w.split(":")[0] for w in warnings] == ["step 1", "step 2"]


def test_mixed_rewards_do_not_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        result = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=2, max_empty_steps=1)).run()
    assert result.steps == 2 and "returned None" not in caplog.text


def test_prompt_longer_than_the_context_is_refused():
    task = get_task("multiplication", digits_a=2, digits_b=1, train_size=8, test_size=4)
    _, tokenizer = build_tiny_model()
    longest = check_prompt_lengths(task, tokenizer, tiny_config(), max_new_tokens=6)
    lengths = [len(tokenizer(task.format_prompt(p))["input_ids"]) for p in task.split("train")["prompt"]]
    assert longest >= max(lengths) > 0
    fits = tiny_config(max_position_embeddings=longest + 6)
    assert check_prompt_lengths(task, tokenizer, fits, max_new_tokens=6) == longest
    short = tiny_config(max_position_embeddings=longest + 5)
    with pytest.raises(ValueError, match=rf"prompt too long: .* has {longest} tokens.*at most {longest - 1};"):
        check_prompt_lengths(task, tokenizer, short, max_new_tokens=6)
    with pytest.raises(ValueError, match="max_new_tokens: 40 leaves no room"):
        check_prompt_lengths(task, tokenizer, tiny_config(max_position_embeddings=40), max_new_tokens=40)


def test_trainer_refuses_a_too_long_prompt_before_training(tmp_path):
    # The multiplication template is longer than 4 + max_new_tokens positions.
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", model="tiny"))
    trainer.config.generation.max_new_tokens = 2044  # tiny has 2048 positions
    with pytest.raises(ValueError, match="prompt too long"):
        trainer.setup()
    assert not (trainer.output_dir / "metrics.jsonl").exists()
