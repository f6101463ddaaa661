"""T-SPMO: one loss row per (prefix, next token) pair with a non-zero advantage, plus prefix replay.

Selection: `prefix_pairs` over the group's completions (a trie, O(total tokens)). Each unique pair with
A(p, v) = mean R over S(p, v) - mean R over S(p) != 0 is one row at its representative (row, pos), with
advantage A(p, v) and weight 1; norm_units = number of pairs (pair_mean) or 0 (sum).

Replay: `rollout_prefix(key)` returns, with probability replay_prob (and only when the buffer holds a
success for `key`), a stored success cut at a uniform position, else []. The trainer generates the G
completions from prompt + prefix and passes only the new tokens in the Group. To store full answers,
the algorithm remembers each prefix it handed out in a FIFO per prompt key; `observe(group)` pops the
oldest pending prefix of group.prompt_key (or [] when none is pending) and stores prefix + completion
for each completion with reward >= success_threshold, so later cuts can land anywhere in the answer.
Contract: per group, one `rollout_prefix` before generation and one `observe` after scoring, in the
same order for groups sharing a prompt key (a FIFO, so one prompt can appear twice in a batch).
"""

from __future__ import annotations

from collections import defaultdict, deque

import torch

from tokrl.algorithms.advantages import all_equal
from tokrl.algorithms.base import AlgoConfig, Algorithm, Group, GroupSelection
from tokrl.algorithms.prefix import prefix_pairs
from tokrl.algorithms.registry import register_algorithm
from tokrl.algorithms.replay import ReplayBuffer
from tokrl.algorithms.selection import check_loss_type, make_selection

PAIR_LOSS_TYPES = ("pair_mean", "sum")


@register_algorithm("t-spmo")
class TSPMO(Algorithm):
    """Token-specific prefix matching with a per-prompt replay buffer of successes."""

    default_loss_type = "pair_mean"

    def __init__(self, config: AlgoConfig | None = None) -> None:
        super().__init__(config)
        check_loss_type(self.name, self.loss_type, PAIR_LOSS_TYPES)
        if not 0.0 <= self.config.replay_prob <= 1.0:
            raise ValueError(f"t-spmo: replay_prob must be in [0, 1], got {self.config.replay_prob}")
        self.replay = ReplayBuffer(self.config.replay_buffer, self.config.success_threshold)
        self._pending: defaultdict[str, deque[list[int]]] = defaultdict(deque)

    def process_group(self, group: Group, generator: torch.Generator | None = None) -> GroupSelection:
        zero_std = all_equal([r for r in group.rewards if r is not None])
        pairs = prefix_pairs(group.completions, group.rewards)  # [] when zero_std
        norm_units = len(pairs) if self.loss_type == "pair_mean" else 0
        return make_selection(
            completion=[p.row for p in pairs],
            position=[p.pos for p in pairs],
            token=[p.token for p in pairs],
            advantage=[p.advantage for p in pairs],
            weight=[1.0] * len(pairs),
            norm_units=norm_units,
            zero_std=zero_std,
        )

    def rollout_prefix(self, prompt_key: str, generator: torch.Generator | None = None) -> list[int]:
        prefix: list[int] = []
        # The coin is only drawn when a replay is possible, so replay_prob = 0 runs consume no randomness.
        if self.config.replay_prob > 0 and self.replay.completions(prompt_key):
            if float(torch.rand((), generator=generator)) < self.config.replay_prob:
                prefix = self.replay.sample_prefix(prompt_key, generator)
        self._pending[prompt_key].append(prefix)
        return list(prefix)

    def observe(self, group: Group) -> None:
        pending = self._pending.get(group.prompt_key)
        prefix = pending.popleft() if pending else []
        if pending is not None and not pending:
            del self._pending[group.prompt_key]  # keep the map from growing with every prompt seen
        for ids, reward in zip(group.completions, group.rewards, strict=True):
            self.replay.add(group.prompt_key, prefix + list(ids), reward)

    def state_dict(self) -> dict:
        # Pending prefixes live only between a group's rollout and its observe, never across a checkpoint.
        return {"replay_buffer": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state.get("replay_buffer", {}))
