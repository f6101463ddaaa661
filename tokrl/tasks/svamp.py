"""SVAMP: 1000 one-step arithmetic word problems (Patel et al., 2021, MIT licence).

Data: by default the copy shipped in `tokrl/tasks/data/svamp/` (read through importlib.resources, so an
installed wheel works offline); `dataset=` also takes a hub id such as "ChilleD/SVAMP" (its own
train/test splits are kept) or a local path (json/jsonl/csv/parquet file or a saved dataset folder).
Rows: prompt = Body + " " + Question; answer = the numeric Answer as text without a trailing ".0".
The original columns (ID, Body, Question, Equation, Answer, Type) are kept for analysis.
Split: a single-split source is cut by a permutation seeded with `seed` (default 0): its first
n - test_size indices train, the last test_size (default 300) test: the 700/300 split of paper.md.
Reward: `svamp_accuracy`, the final number of the completion (see rewards.py) within 1e-4 of the answer.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import datasets

from tokrl.tasks.base import Task, check_columns
from tokrl.tasks.loading import DatasetSource, describe, load_source, seeded_permutation
from tokrl.tasks.registry import register_task
from tokrl.tasks.rewards import format_number, svamp_accuracy

# A base LM needs to be told where the number goes; the template ends in a newline so the warm-start
# completion "answer: 51" starts a fresh line instead of needing a leading space after "Solution:".
SVAMP_TEMPLATE = "Question: {prompt}\nThink briefly, then give the final number after 'answer:'.\nSolution:\n"

OFFLINE_HINT = (
    "omit `dataset` to use the SVAMP copy packaged with tokrl, or pass a local path "
    "(a json/jsonl/csv/parquet file or a save_to_disk folder)"
)


def packaged_svamp() -> datasets.Dataset:
    """The 1000 SVAMP problems shipped inside the package, in file order."""
    # Read via importlib.resources (not a path next to __file__) so zipped or wheel installs work too;
    # json + from_list keeps this fast and leaves no cache files behind.
    text = files("tokrl.tasks").joinpath("data", "svamp", "SVAMP.json").read_text(encoding="utf-8")
    return datasets.Dataset.from_list(json.loads(text))


def to_task_rows(dataset: datasets.Dataset, *, what: str) -> datasets.Dataset:
    """Add `prompt` and `answer` from SVAMP's Body/Question/Answer (sources already in task form pass)."""
    if {"Body", "Question", "Answer"} <= set(dataset.column_names):
        prompts = [
            f"{body.strip()} {question.strip()}"
            for body, question in zip(dataset["Body"], dataset["Question"], strict=True)
        ]
        answers = [format_number(answer) for answer in dataset["Answer"]]
        dataset = dataset.remove_columns([c for c in ("prompt", "answer") if c in dataset.column_names])
        return dataset.add_column("prompt", prompts).add_column("answer", answers)
    check_columns(dataset, what=what)
    answers = [format_number(answer) for answer in dataset["answer"]]
    return dataset.remove_columns("answer").add_column("answer", answers)


@register_task("svamp")
class SvampTask(Task):
    """SVAMP word problems with a numeric-answer reward.

    Options: `dataset` (None: packaged copy; or a hub id / local path / Dataset / DatasetDict), `seed` and
    `test_size` (the seeded split of single-split sources), `template` (must contain "{prompt}").
    """

    default_template = SVAMP_TEMPLATE

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        seed: int = 0,
        test_size: int = 300,
        template: str | None = None,
    ) -> None:
        super().__init__(template)
        source = packaged_svamp() if dataset is None else load_source(dataset, hint=OFFLINE_HINT)
        if isinstance(source, datasets.DatasetDict) and {"train", "test"} <= set(source):
            train = to_task_rows(source["train"], what="svamp train split")
            test = to_task_rows(source["test"], what="svamp test split")
        else:
            if isinstance(source, datasets.DatasetDict):
                if len(source) != 1:
                    raise ValueError(f"svamp: expected 'train' and 'test' splits or one split, got {sorted(source)}")
                source = next(iter(source.values()))
            # Columns first, then select: adding columns to a selected view would copy it (and log a bar).
            train, test = self._seeded_split(to_task_rows(source, what="svamp dataset"), seed, test_size)
        self._data = {"train": train, "test": test}
        self.options.update(dataset=describe(dataset), seed=seed, test_size=test_size)

    @staticmethod
    def _seeded_split(source: datasets.Dataset, seed: int, test_size: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        if not 0 < test_size < source.num_rows:
            raise ValueError(f"svamp: test_size must be between 1 and {source.num_rows - 1}, got {test_size}")
        order = seeded_permutation(source.num_rows, seed)
        cut = source.num_rows - test_size
        return source.select(order[:cut]), source.select(order[cut:])

    @property
    def reward_name(self) -> str:
        return svamp_accuracy.__name__

    def _split(self, name: str) -> datasets.Dataset:
        return self._data[name]

    def reference_completion(self, example: dict[str, Any]) -> str:
        return f"answer: {example['answer']}"

    def _score(self, completions: list[Any], columns: dict[str, list[Any]]) -> list[float | None]:
        return list(svamp_accuracy(completions, **columns))
