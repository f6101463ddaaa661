"""S-GRPO: GRPO's advantages on a stochastic subset of each completion's tokens (`sample_positions`).

Per completion: the first alpha tokens, each later one with p = min(1, alpha / (L - alpha)), at most
max_tokens in all; weight 1 / (selected tokens of o_i) under the default seq_mean. Completions are drawn
in group order from the generator the trainer seeds from the run seed and step, so runs reproduce.
"""

from __future__ import annotations

import torch

from tokrl.algorithms.base import AlgoConfig
from tokrl.algorithms.registry import register_algorithm
from tokrl.algorithms.sampling import sample_positions
from tokrl.algorithms.sequence import SequenceAdvantageAlgorithm


@register_algorithm("s-grpo")
class SGRPO(SequenceAdvantageAlgorithm):
    """Selects `sample_positions(|o_i|, alpha, max_tokens)` of every completion with a reward."""

    def __init__(self, config: AlgoConfig | None = None) -> None:
        super().__init__(config)
        if self.config.alpha < 0 or self.config.max_tokens < 0:
            raise ValueError(
                f"s-grpo: alpha and max_tokens must be >= 0, got {self.config.alpha}, {self.config.max_tokens}"
            )

    def select_positions(self, length: int, generator: torch.Generator | None) -> torch.Tensor:
        return sample_positions(length, self.config.alpha, self.config.max_tokens, generator)  # [n] sorted
