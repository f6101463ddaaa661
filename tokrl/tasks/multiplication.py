"""Synthetic multi-digit multiplication: a * b with a of exactly `digits_a` and b of `digits_b` digits.

Rows: prompt "123*456" (short, for char-level tiny models), formatted as "123*456=" by the default
template; answer "56088". The model should write the product and stop.
Sampling: the (a, b) pairs are ordered (123*456 and 456*123 are different problems) and leading digits
are non-zero. With `seed`, `test_size` distinct pairs are drawn first and then `train_size` more, distinct
from all before, so the two splits are disjoint and the test set does not move when train_size changes.
Defaults: test_size = min(500, pairs // 5) and train_size = min(10_000, pairs - test_size), so small
spaces (1x1 digits: 81 pairs) still work; sizes asked for explicitly that do not fit raise a ValueError.
Reward: `multiplication_exact`, exact integer after the last "=" or else the last integer (rewards.py).
"""

from __future__ import annotations

import random
from typing import Any

import datasets

from tokrl.tasks.base import Task
from tokrl.tasks.loading import seeded_permutation
from tokrl.tasks.registry import register_task
from tokrl.tasks.rewards import multiplication_exact

MULTIPLICATION_TEMPLATE = "{prompt}="
DEFAULT_TRAIN_SIZE = 10_000
DEFAULT_TEST_SIZE = 500


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"multiplication: {name} must be a positive integer, got {value!r}")
    return value


def sample_pair_indices(total: int, count: int, seed: int) -> list[int]:
    """`count` distinct indices of range(total), in draw order, fixed by `seed`."""
    if count * 2 > total:
        # Dense request: permute the whole (small) space rather than rejection-sample near exhaustion.
        return seeded_permutation(total, seed)[:count]
    # Sparse request: rejection sampling; `randrange` takes Python ints, so spaces past 2**63 work too.
    rng = random.Random(seed)
    chosen: dict[int, None] = {}  # insertion-ordered set: the draw order is the row order
    while len(chosen) < count:
        chosen.setdefault(rng.randrange(total))
    return list(chosen)


@register_task("multiplication")
class MultiplicationTask(Task):
    """a * b with exact-integer reward. Options: digits_a, digits_b, seed, train_size, test_size, template."""

    default_template = MULTIPLICATION_TEMPLATE

    def __init__(
        self,
        digits_a: int = 3,
        digits_b: int = 3,
        seed: int = 0,
        train_size: int | None = None,
        test_size: int | None = None,
        template: str | None = None,
    ) -> None:
        super().__init__(template)
        digits_a, digits_b = _positive_int("digits_a", digits_a), _positive_int("digits_b", digits_b)
        count_a, count_b = 9 * 10 ** (digits_a - 1), 9 * 10 ** (digits_b - 1)
        total = count_a * count_b
        if test_size is None:
            test_size = max(1, min(DEFAULT_TEST_SIZE, total // 5))
        if train_size is None:
            train_size = max(1, min(DEFAULT_TRAIN_SIZE, total - test_size))
        train_size, test_size = _positive_int("train_size", train_size), _positive_int("test_size", test_size)
        if train_size + test_size > total:
            raise ValueError(
                f"multiplication: only {total} distinct (a, b) pairs exist for {digits_a}-digit x {digits_b}-digit "
                f"operands, but train_size + test_size = {train_size} + {test_size} = {train_size + test_size}"
            )
        indices = sample_pair_indices(total, test_size + train_size, seed)
        # Index i -> (a, b) in row-major order over [10**(d-1), 10**d) for each operand.
        pairs = [(10 ** (digits_a - 1) + i // count_b, 10 ** (digits_b - 1) + i % count_b) for i in indices]
        self._data = {
            "test": self._rows(pairs[:test_size]),
            "train": self._rows(pairs[test_size:]),
        }
        self.options.update(digits_a=digits_a, digits_b=digits_b, seed=seed, train_size=train_size, test_size=test_size)

    @staticmethod
    def _rows(pairs: list[tuple[int, int]]) -> datasets.Dataset:
        # Strings, not int columns: products of long operands overflow Arrow's int64.
        return datasets.Dataset.from_dict(
            {"prompt": [f"{a}*{b}" for a, b in pairs], "answer": [str(a * b) for a, b in pairs]}
        )

    @property
    def reward_name(self) -> str:
        return multiplication_exact.__name__

    def _split(self, name: str) -> datasets.Dataset:
        return self._data[name]

    def _score(self, completions: list[Any], columns: dict[str, list[Any]]) -> list[float | None]:
        return list(multiplication_exact(completions, **columns))
