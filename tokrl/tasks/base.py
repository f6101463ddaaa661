"""The Task contract between data, the model's prompt and the reward.

A task owns two `datasets.Dataset` splits ("train", "test") with at least a `prompt` and an `answer`
column, the template that turns a `prompt` into the model's input text, the completion used for the
supervised warm start, and a reward function with TRL's contract:
`reward(completions, **columns) -> list[float | None]`, columns being lists aligned with completions.
The trainer passes each example's columns repeated once per completion.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from tokrl.infra.validation import reward_problem
from tokrl.tasks.conversation import as_assistant_messages, is_conversational, render_chat


class RewardError(ValueError, TypeError):
    """A reward function raised, or returned something other than one finite number or None per completion
    (a ValueError and a TypeError, so callers catching either keep working). When it raised, the user's
    exception is the __cause__ (shown by `tokrl train --debug`)."""


SPLITS = ("train", "test")
REQUIRED_COLUMNS = ("prompt", "answer")
PLACEHOLDER = "{prompt}"

RewardFn = Callable[..., Sequence[float | None]]


def check_template(template: str) -> str:
    """A prompt template must hold the "{prompt}" placeholder (it is replaced, not str.format-ted)."""
    if not isinstance(template, str) or PLACEHOLDER not in template:
        raise ValueError(f"template must be a string containing {PLACEHOLDER!r}, got {template!r}")
    return template


def check_prompts(dataset: datasets.Dataset, *, what: str) -> datasets.Dataset:
    """Every `prompt` must be text or a list of chat messages: name the first row that is neither."""
    for row, prompt in enumerate(dataset["prompt"]):
        if not isinstance(prompt, str) and not is_conversational(prompt):
            raise ValueError(
                f"{what}: row {row} of column 'prompt' is {prompt!r:.60} (type {type(prompt).__name__}); a prompt must "
                "be text or a list of chat messages ({'role': ..., 'content': ...})"
            )
    return dataset


def check_columns(dataset: datasets.Dataset, *, what: str) -> datasets.Dataset:
    """Raise a ValueError naming the missing required columns and the columns found."""
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; columns found: {dataset.column_names} "
            f"(a task needs {list(REQUIRED_COLUMNS)})"
        )
    return dataset


class Task(ABC):
    """A named dataset pair plus prompt template and reward.

    Subclasses set `default_template`, fill `options` with every resolved option (plain values only, as
    they are written into checkpoint configs) and implement `_split` and `_score`.
    """

    name: str = "task"  # set by `register_task`
    default_template: str = PLACEHOLDER

    def __init__(self, template: str | None = None) -> None:
        self.template = check_template(self.default_template if template is None else template)
        self.options: dict[str, Any] = {"template": self.template}

    @property
    @abstractmethod
    def reward_name(self) -> str:
        """The reward function's name, for logs and error messages."""

    @abstractmethod
    def _split(self, name: str) -> datasets.Dataset:
        """The dataset of split `name`, already validated to be one of SPLITS."""

    @abstractmethod
    def _score(self, completions: list[Any], columns: dict[str, list[Any]]) -> list[float | None]:
        """Rewards of `completions`; lengths are already checked."""

    def split(self, name: str) -> datasets.Dataset:
        """The "train" or "test" split: a Dataset with `prompt` and `answer` columns (and maybe others)."""
        if name not in SPLITS:
            raise ValueError(f"task {self.name!r}: unknown split {name!r}; expected one of {list(SPLITS)}")
        return self._split(name)

    def format_prompt(self, prompt: str) -> str:
        """The text fed to the model for a `prompt` column value."""
        return self.template.replace(PLACEHOLDER, prompt)

    def render_prompt(self, prompt: Any, tokenizer: PreTrainedTokenizerBase) -> str:
        """The model's input text for a `prompt` value: `format_prompt` for text, the tokenizer's chat template
        (add_generation_prompt=True) for a conversational prompt (a list of {"role", "content"} messages)."""
        return render_chat(prompt, tokenizer) if is_conversational(prompt) else self.format_prompt(prompt)

    def reference_completion(self, example: dict[str, Any]) -> str:
        """The completion used as the supervised warm-start target (EOS is the trainer's business)."""
        return str(example["answer"])

    def reward(self, completions: list[Any], **columns: list[Any]) -> list[float | None]:
        """Score each completion against its aligned column values; None means "cannot score".

        With conversational prompts, the reward gets each text completion as [{"role": "assistant", ...}]."""
        completions = list(completions)
        for column, values in columns.items():
            # Any sized column works (list, datasets Column, numpy array); a bare string is a common slip.
            if isinstance(values, str | bytes) or not hasattr(values, "__len__") or len(values) != len(completions):
                raise ValueError(
                    f"{self.reward_name}: column {column!r} must be a list aligned with the "
                    f"{len(completions)} completions"
                )
        if not completions:
            return []
        conversational = "prompt" in columns and all(is_conversational(p) for p in columns["prompt"])
        if conversational and all(isinstance(c, str) for c in completions):
            completions = as_assistant_messages(completions)  # TRL's shape for conversational prompts
        try:
            scores = list(self._score(completions, {column: list(values) for column, values in columns.items()}))
        except RewardError:
            raise
        except Exception as err:  # noqa: BLE001 (the user's function: any exception is theirs to fix)
            raise RewardError(self._raised(err, completions)) from err
        if len(scores) != len(completions):
            raise RewardError(f"{self.reward_name}: returned {len(scores)} rewards for {len(completions)} completions")
        checked: list[float | None] = []
        for score in scores:
            problem = reward_problem(score)
            if problem is not None:
                raise RewardError(f"reward function {self.reward_name!r}: rewards {problem}, got {score!r}")
            checked.append(None if score is None else float(score))
        return checked

    def _raised(self, err: Exception, completions: list[Any]) -> str:
        """One line for an exception the reward function raised (its traceback stays the __cause__)."""
        cause = (str(err).splitlines() or [""])[0][:200]
        hint = ""
        if isinstance(err, AttributeError | TypeError) and completions and not isinstance(completions[0], str):
            hint = (
                "; with conversational prompts each completion is a list of messages, "
                "[{'role': 'assistant', 'content': text}]: read completion[-1]['content']"
            )
        return f"reward function {self.reward_name!r} raised {type(err).__name__}: {cause}{hint}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, options={self.options!r})"
