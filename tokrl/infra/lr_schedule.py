"""The learning-rate schedules: RL's (`lr_scheduler`: linear warmup, then a shape) and the warm start's.

Factor of the base learning rate at optimiser step i (0-based), with `warmup` warmup steps and `total` steps:

    i < warmup        (i + 1) / warmup
    constant          1
    linear            1 - p,  p = min(1, (i - warmup) / max(total - warmup, 1))      0 at `total`
    cosine            (1 + cos(pi * p)) / 2
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _linear(i: int, warmup: int, total: int) -> float:
    return 1.0 - min(1.0, (i - warmup) / max(total - warmup, 1))


def _cosine(i: int, warmup: int, total: int) -> float:
    progress = min(1.0, (i - warmup) / max(total - warmup, 1))
    return 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "constant": lambda i, warmup, total: 1.0,
    "linear": _linear,
    "cosine": _cosine,
}


def lr_factor(i: int, *, shape: str, warmup: int, total: int) -> float:
    """The factor of the base learning rate at optimiser step i (module docstring)."""
    if i < warmup:
        return (i + 1) / warmup
    return SCHEDULES[shape](i, warmup, total)


def lr_scheduler(
    optimizer: torch.optim.Optimizer, shape: str, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of `lr_factor`: `warmup` optimiser steps of linear warmup, then `shape` up to `total` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, shape=shape, warmup=warmup, total=total))


def warm_start_scheduler(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The supervised warm start's schedule over `steps` steps: the smaller of a linear warmup over the first 10%
    and a linear decay to 0 at `steps`, min((i + 1) / warmup, max(0, (steps - i) / max(steps - warmup, 1)))."""
    warmup = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min((i + 1) / warmup, max(0.0, (steps - i) / max(steps - warmup, 1)))
    )
