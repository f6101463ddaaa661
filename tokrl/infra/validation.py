"""One-line checks of option values: each error names the option, what was expected and what came."""

from __future__ import annotations

import dataclasses
import math
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
