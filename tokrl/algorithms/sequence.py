"""The shared body of GRPO and S-GRPO: one advantage per completion, spread over its selected tokens.

For a group with valid rewards R (None rewards are left out of the baseline and get no tokens):
    A_i = group_advantages(R)                       shared by every selected token of o_i
    seq_mean:   w = 1 / n_i per token of o_i,  norm_units = number of valid completions
    token_mean: w = 1,                         norm_units = number of selected tokens
    sum:        w = 1,                         norm_units = 0 (the trainer divides by max(total, 1))
where n_i is the number of selected tokens of o_i. The trainer's final weight is w / sum(norm_units), so
seq_mean is the paper's mean over completions of each completion's token mean.

A group whose valid rewards are all equal has A = 0 everywhere: it returns an EMPTY selection (no
forward/backward work) but keeps its norm_units, so the denominator still counts it as the paper's mean
over all completions does. With beta > 0 this also drops those tokens' KL term, a deliberate saving.
Subclasses only choose positions (`select_positions`, and `select_group_positions` for a whole group at
once); zero-std groups still draw them, so the random stream, and so every other group's selection, does not
depend on rewards.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from tokrl.algorithms.advantages import all_equal, group_advantages, validate_rewards
from tokrl.algorithms.base import AlgoConfig, Algorithm, Group, GroupSelection
from tokrl.algorithms.selection import check_loss_type, empty_selection

SEQUENCE_LOSS_TYPES = ("seq_mean", "token_mean", "sum")


class SequenceAdvantageAlgorithm(Algorithm):
    """GRPO-style: a group-relative advantage per completion; subclasses pick the token positions."""

    default_loss_type = "seq_mean"

    def __init__(self, config: AlgoConfig | None = None) -> None:
        super().__init__(config)
        check_loss_type(self.name, self.loss_type, SEQUENCE_LOSS_TYPES)

    @abstractmethod
    def select_positions(self, length: int, generator: torch.Generator | None) -> torch.Tensor:
        """Sorted unique positions in [0, length) that enter the loss: [n] int64."""

    def select_group_positions(self, lengths: list[int], generator: torch.Generator | None) -> list[list[int]]:
        """`select_positions` of each completion length, in order, as lists (subclasses batch the draws)."""
        return [self.select_positions(n, generator).tolist() for n in lengths]

    def process_group(self, group: Group, generator: torch.Generator | None = None) -> GroupSelection:
        completions, rewards = group.completions, group.rewards
        if len(completions) != len(rewards):
            raise ValueError(f"{self.name}: {len(completions)} completions but {len(rewards)} rewards")
        validate_rewards(rewards)
        valid = [i for i, r in enumerate(rewards) if r is not None]
        values = [float(rewards[i]) for i in valid]
        zero_std = all_equal(values)
        positions = self.select_group_positions([len(completions[i]) for i in valid], generator)  # V lists
        counts = [len(p) for p in positions]  # [V] selected tokens per valid completion
        loss_type = self.loss_type
        total = sum(counts)
        norm_units = {"seq_mean": len(valid), "token_mean": total, "sum": 0}[loss_type]
        if zero_std or total == 0:
            return empty_selection(norm_units, zero_std)
        advantages = group_advantages(values, scale=self.config.scale_rewards)  # [V] fp32
        if loss_type == "seq_mean":
            per_row = 1.0 / torch.tensor(counts, dtype=torch.float32).clamp(min=1)  # [V]; n_i = 0 selects nothing
        else:
            per_row = torch.ones(len(valid), dtype=torch.float32)  # [V]
        # The k selected tokens are built as Python lists and become tensors once per group: per-completion
        # tensor ops cost more than the arithmetic at a few tokens per completion.
        row = [j for j, p in enumerate(positions) for _ in p]  # [k] index into the V valid completions
        index = torch.tensor(row, dtype=torch.int64)  # [k]
        return GroupSelection(
            completion=torch.tensor([valid[j] for j in row], dtype=torch.int64),  # [k]
            position=torch.tensor([t for p in positions for t in p], dtype=torch.int64),  # [k]
            token=torch.tensor(
                [int(completions[i][t]) for i, p in zip(valid, positions, strict=True) for t in p], dtype=torch.int64
            ),  # [k]
            advantage=advantages[index],  # [k] fp32
            weight=per_row[index],  # [k] fp32
            norm_units=float(norm_units),
            zero_std=False,
        )
