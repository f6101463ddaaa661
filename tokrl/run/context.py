"""Prompts must fit the model's context: prompt tokens + max_new_tokens <= max_position_embeddings.

A longer prompt is not an error the model reports: positions past the table wrap, clamp or raise deep in
attention, depending on the architecture, after the run has started. `check_prompt_lengths` tokenizes
every prompt of both splits once, before training, and refuses the run naming the longest prompt, the
limit and the two ways out (a shorter --max-new-tokens, or shorter prompts).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from tokrl.sampler.rollout import encode_prompts
from tokrl.tasks import Task


def context_length(model_config: Any) -> int | None:
    """The model's position limit (max_position_embeddings), or None when the config does not say."""
    value = getattr(model_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_prompt_lengths(
    task: Task, tokenizer: PreTrainedTokenizerBase, model_config: Any, max_new_tokens: int
) -> int | None:
    """Raise ValueError when a train or test prompt is longer than context - max_new_tokens tokens.

    Returns the longest prompt's length (None when the model states no limit).
    """
    context = context_length(model_config)
    if context is None:
        return None
    budget = context - max_new_tokens
    if budget < 1:
        raise ValueError(
            f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's {context} positions "
            "(max_position_embeddings)"
        )
    longest, where = 0, ""
    for split in ("train", "test"):
        prompts = task.split(split)["prompt"]
        lengths = [len(ids) for ids in encode_prompts(tokenizer, [task.render_prompt(p, tokenizer) for p in prompts])]
        for i, n in enumerate(lengths):
            if n > longest:
                longest, where = n, f"{split} example {i}"
    if longest > budget:
        raise ValueError(
            f"prompt too long: the {task.name!r} {where} has {longest} tokens, but the model has "
            f"{context} positions and max_new_tokens is {max_new_tokens}, so a prompt may have at most "
            f"{budget}; lower --max-new-tokens or shorten the prompts"
        )
    return longest
