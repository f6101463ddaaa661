"""S-GRPO: GRPO's advantages on a stochastic subset of each completion's tokens (`sample_positions`).

Per completion: the first alpha tokens, then later ones by `selection` (default "sequential": the earliest
that pass a Bernoulli(keep_prob) draw, the paper's rule), at most max_tokens in all; weight
1 / (selected tokens of o_i) under the default seq_mean. Completions are drawn in group order from the
generator the trainer seeds from (seed, step, prompt), so runs reproduce and resume exactly.
"""

from __future__ import annotations

import torch

from tokrl.algorithms.base import AlgoConfig
from tokrl.algorithms.registry import register_algorithm
from tokrl.algorithms.sampling import check_selection_options, sample_group_positions, sample_positions
from tokrl.algorithms.sequence import SequenceAdvantageAlgorithm


@register_algorithm("s-grpo")
class SGRPO(SequenceAdvantageAlgorithm):
    """Selects `sample_positions(|o_i|, alpha, max_tokens, rule=selection)` of every completion with a reward."""

    def __init__(self, config: AlgoConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        check_selection_options(c.alpha, c.max_tokens, c.selection, c.keep_prob, rule_key="selection")

    def select_positions(self, length: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        return sample_positions(
            length, c.alpha, c.max_tokens, generator, rule=c.selection, keep_prob=c.keep_prob
        )  # [n] sorted

    def select_group_positions(self, lengths: list[int], generator: torch.Generator | None) -> list[list[int]]:
        c = self.config
        return sample_group_positions(
            lengths, c.alpha, c.max_tokens, generator, rule=c.selection, keep_prob=c.keep_prob
        )  # V lists, each sorted
