"""One-line checks of option values: each error names the option, what was expected and what came."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any


def require(ok: bool, message: str) -> None:
    """ValueError(message) unless ok."""
    if not ok:
        raise ValueError(message)


def check_finite(options: Any, cls: type, prefix: str = "") -> None:
    """Every float field of the dataclass `cls` in `options` must be a finite number: nan/inf would silently
    disable clipping, flatten the sampling distribution or poison the weights after the model has loaded."""
    for f in dataclasses.fields(cls):
        value = getattr(options, f.name)
        require(
            not isinstance(value, float) or math.isfinite(value),
            f"{prefix}{f.name}: must be a finite number, got {value}",
        )


NOT_A_NUMBER = "must be numbers or None"
NOT_FINITE = "must be finite numbers or None"


def reward_problem(value: object) -> str | None:
    """What is wrong with `value` as a reward, or None when it is one: a real number other than a bool (True is
    not 1.0 here: a reward function returning bools is a bug to report), finite, or None ("cannot score")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return NOT_A_NUMBER
    if not math.isfinite(value):
        return NOT_FINITE
    return None
