"""TRL's conversational format in tokrl's tasks: a `prompt` given as chat messages.

A conversational prompt is a non-empty list of {"role": ..., "content": ...} dicts (TRL's format). It is
rendered for the model with the tokenizer's chat template, `add_generation_prompt=True`, so the model answers
as the assistant; the task's text template is not applied to it. Rewards then receive each completion as the
message list TRL passes, `[{"role": "assistant", "content": text}]`, instead of the plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase


def is_conversational(prompt: Any) -> bool:
    """True for a non-empty list of {"role", "content"} messages."""
    return (
        isinstance(prompt, list | tuple)
        and len(prompt) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
    )


def render_chat(messages: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> str:
    """The model's input text for a conversational prompt: the chat template plus the assistant's turn opener."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"prompt is a list of chat messages, but the tokenizer ({type(tokenizer).__name__}) has no chat "
            "template; use an instruct model's tokenizer or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def as_assistant_messages(completions: Sequence[str]) -> list[list[dict[str, str]]]:
    """Each completion text as TRL hands it to rewards for conversational prompts."""
    return [[{"role": "assistant", "content": text}] for text in completions]
