"""Building `GroupSelection`s from per-row Python lists, and checking loss types."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokrl.algorithms.base import GroupSelection


def check_loss_type(algorithm: str, loss_type: str, supported: Sequence[str]) -> None:
    """Raise a ValueError listing `supported` when `loss_type` is not one of them."""
    if loss_type not in supported:
        raise ValueError(f"{algorithm}: unknown loss_type {loss_type!r}; expected one of: {', '.join(supported)}")


def make_selection(
    completion: Sequence[int],
    position: Sequence[int],
    token: Sequence[int],
    advantage: Sequence[float],
    weight: Sequence[float],
    norm_units: float,
    zero_std: bool,
) -> GroupSelection:
    """Aligned length-k lists -> a GroupSelection of CPU tensors (int64 indices, fp32 values)."""
    return GroupSelection(
        completion=torch.tensor(completion, dtype=torch.int64),  # [k]
        position=torch.tensor(position, dtype=torch.int64),  # [k]
        token=torch.tensor(token, dtype=torch.int64),  # [k]
        advantage=torch.tensor(advantage, dtype=torch.float32),  # [k]
        weight=torch.tensor(weight, dtype=torch.float32),  # [k]
        norm_units=float(norm_units),
        zero_std=zero_std,
    )


def empty_selection(norm_units: float, zero_std: bool) -> GroupSelection:
    """A selection of no tokens that still contributes `norm_units` to the batch normaliser."""
    return make_selection([], [], [], [], [], norm_units, zero_std)
