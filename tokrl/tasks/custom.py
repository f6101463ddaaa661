"""A task from any dataset with `prompt` and `answer` columns and any TRL-style reward function.

`get_task("custom", dataset=..., reward=..., test_dataset=None, ...)`:
- dataset: a `datasets.Dataset` / `DatasetDict`, a local path (json/jsonl/csv/parquet file or a saved
  dataset folder) or a hub id; the `split` option (default "train") picks the training split of a dict.
- test_dataset: None takes a seeded holdout of `test_size` rows (int, or a fraction in (0, 1)) when given,
  else the source's "test" split if it has one, else there is no test split and `split("test")` says so.
  With a DatasetDict source, a bare word (no "/", not an existing path) names one of its splits;
  anything else is loaded like `dataset` (and its "test" split is used if it has several).
- reward: a callable, a dotted path "pkg.module:function" (or "pkg.module.function"), or the name of a
  built-in reward in rewards.py ("exact_match", "svamp_accuracy", "multiplication_exact").
The reward is called with keyword arguments the way TRL calls it: `completions=`, every column, and
`prompts=` (TRL's name for the prompt column). A function without **kwargs only gets the arguments it
names. It may return None for a completion it cannot score.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import datasets

from tokrl.tasks.base import RewardError, RewardFn, Task, check_columns, check_prompts
from tokrl.tasks.loading import DatasetSource, describe, load_source, pick_split, seeded_permutation
from tokrl.tasks.registry import register_task
from tokrl.tasks.rewards import REWARDS

OFFLINE_HINT = "pass a local path (a json/jsonl/csv/parquet file or a save_to_disk folder) or a datasets.Dataset"


def resolve_reward(reward: RewardFn | str) -> RewardFn:
    """A reward callable from a callable, a built-in name or a dotted path; clear errors otherwise."""
    if callable(reward):
        return reward
    if not isinstance(reward, str):
        raise TypeError(f"reward must be a callable or a dotted path string, got {type(reward).__name__}")
    if reward in REWARDS:
        return REWARDS[reward]
    module_name, sep, attribute = reward.partition(":") if ":" in reward else reward.rpartition(".")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"reward {reward!r}: expected a dotted path like 'mypkg.rewards:exact_match' "
            f"or a built-in reward name ({', '.join(sorted(REWARDS))})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward {reward!r}: cannot import module {module_name!r} ({error})") from error
    fn: Any = module
    for part in attribute.split("."):  # "module:Class.method" is allowed
        if not hasattr(fn, part):
            raise ValueError(f"reward {reward!r}: module {module_name!r} has no attribute {attribute!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"reward {reward!r}: {attribute!r} is a {type(fn).__name__}, not a callable")
    return fn


def _reward_kwargs(fn: RewardFn, completions: list[Any], columns: dict[str, list[Any]]) -> dict[str, Any]:
    """The keyword arguments TRL would pass, trimmed to what `fn` accepts when it takes no **kwargs."""
    kwargs: dict[str, Any] = {**columns, "completions": completions}
    if "prompt" in columns and "prompts" not in columns:
        kwargs["prompts"] = columns["prompt"]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass everything
        return kwargs
    if any(param.kind is param.VAR_KEYWORD for param in params.values()):
        return kwargs
    missing = [
        name
        for name, param in params.items()
        if param.default is param.empty
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        and name not in kwargs
    ]
    if missing:
        raise ValueError(
            f"reward {getattr(fn, '__name__', fn)!r} needs argument(s) {missing}, which are not columns; "
            f"available: {sorted(kwargs)}"
        )
    return {name: value for name, value in kwargs.items() if name in params}


def _is_location(text: str) -> bool:
    # With a DatasetDict source, a bare word is a split name ("validation"), never a path or a hub id.
    return "/" in text or Path(text).expanduser().exists()


@register_task("custom")
class CustomTask(Task):
    """A user dataset plus a user reward. Options: dataset, reward, test_dataset, split, test_size, seed,
    template (default "{prompt}": the prompt column is fed as is)."""

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        reward: RewardFn | str | None = None,
        test_dataset: DatasetSource | None = None,
        split: str = "train",
        test_size: int | float | None = None,
        seed: int = 0,
        template: str | None = None,
    ) -> None:
        super().__init__(template)
        if dataset is None:
            raise ValueError("custom task: `dataset` is required (a Dataset, DatasetDict, local path or hub id)")
        if reward is None:
            raise ValueError("custom task: `reward` is required (a callable, 'pkg.module:function' or a built-in name)")
        if test_dataset is not None and test_size is not None:
            raise ValueError("custom task: give either test_dataset or test_size, not both")
        self.reward_fn = resolve_reward(reward)
        source = load_source(dataset, hint=OFFLINE_HINT)
        train = pick_split(source, split, what="custom dataset")
        test: datasets.Dataset | None = None
        if test_dataset is None:
            if test_size is not None:  # asked for explicitly, so it wins over a "test" split
                train, test = self._holdout(train, test_size, seed)
            elif isinstance(source, datasets.DatasetDict) and "test" in source and split != "test":
                test = source["test"]
        elif (
            isinstance(source, datasets.DatasetDict)
            and isinstance(test_dataset, str)
            and not _is_location(test_dataset)
        ):
            test = pick_split(source, test_dataset, what="custom dataset")
        else:
            test = pick_split(
                load_source(test_dataset, hint=OFFLINE_HINT), "test", what="custom test_dataset", or_only=True
            )
        self._data = {"train": train} if test is None else {"train": train, "test": test}
        for name, data in self._data.items():
            check_prompts(check_columns(data, what=f"custom {name} split"), what=f"custom {name} split")
            # A reward argument that is not a column fails now, not at the first evaluation.
            _reward_kwargs(self.reward_fn, [], {column: [] for column in data.column_names})
        self.options.update(
            dataset=describe(dataset),
            reward=describe(reward),
            test_dataset=describe(test_dataset),
            split=split,
            test_size=test_size,
            seed=seed,
        )

    @staticmethod
    def _holdout(
        train: datasets.Dataset, test_size: int | float, seed: int
    ) -> tuple[datasets.Dataset, datasets.Dataset]:
        rows = train.num_rows
        count = round(test_size * rows) if isinstance(test_size, float) else test_size
        if isinstance(test_size, bool) or not 0 < count < rows:
            raise ValueError(
                f"custom task: test_size={test_size!r} leaves no train or no test rows out of {rows}; "
                "use an int in [1, rows - 1] or a fraction in (0, 1)"
            )
        order = seeded_permutation(rows, seed)
        return train.select(order[count:]), train.select(order[:count])

    @property
    def reward_name(self) -> str:
        return getattr(self.reward_fn, "__name__", type(self.reward_fn).__name__)

    def _split(self, name: str) -> datasets.Dataset:
        if name not in self._data:
            raise ValueError(
                "custom task: the dataset has no test split; pass test_dataset= (a split name, dataset or path) "
                "or test_size= for a seeded holdout"
            )
        return self._data[name]

    def _score(self, completions: list[Any], columns: dict[str, list[Any]]) -> list[float | None]:
        scores = self.reward_fn(**_reward_kwargs(self.reward_fn, completions, columns))
        if scores is None or isinstance(scores, str | bytes | dict) or not hasattr(scores, "__iter__"):
            raise RewardError(
                f"{self.reward_name}: returned {scores!r:.60} instead of a list of rewards (a {type(scores).__name__}; "
                "expected one float or None per completion)"
            )
        return list(scores)
