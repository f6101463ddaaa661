"""GRPO, the full-token baseline: every completion token (EOS included) enters the loss.

Advantages and weights are those of `SequenceAdvantageAlgorithm`: A_i = (R_i - mean R) / (std R + 1e-4)
on every token of o_i, weight 1 / |o_i| under the default seq_mean.
"""

from __future__ import annotations

import torch

from tokrl.algorithms.registry import register_algorithm
from tokrl.algorithms.sequence import SequenceAdvantageAlgorithm


@register_algorithm("grpo")
class GRPO(SequenceAdvantageAlgorithm):
    """Selects positions 0 .. |o_i| - 1 of every completion with a reward."""

    def select_positions(self, length: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.arange(length, dtype=torch.int64)  # [L]: no randomness, the generator is unused

    def select_group_positions(self, lengths: list[int], generator: torch.Generator | None) -> list[list[int]]:
        return [list(range(n)) for n in lengths]
