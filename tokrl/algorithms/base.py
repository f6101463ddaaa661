"""The contract between a rollout group, an algorithm and the trainer.

Data flow: one prompt's G completions (a `Group`) -> `Algorithm.process_group` -> a `GroupSelection`:
the selected (completion, position) pairs with their target token, advantage and un-normalised loss
weight. The trainer concatenates the selections of every group in the batch, divides each weight by the
batch's total `norm_units` (summed across ranks when distributed, so normalisation is global), and feeds
the rows to `tokrl_kernels.linear_pg_loss`. The trainer never branches on an algorithm's name.

Positions index completion tokens: position t is token o_t, predicted from the prompt plus o_<t.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from tokrl.algorithms.sampling import check_selection_options
from tokrl.infra.validation import check_finite, require


@dataclass
class AlgoConfig:
    """Options shared by the algorithms; each field is documented once and reused as CLI help."""

    scale_rewards: bool = field(
        default=True, metadata={"help": "Divide group-centred rewards by (std + 1e-4) (False: Dr. GRPO style)."}
    )
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "Loss normalisation: 'seq_mean' (GRPO/S-GRPO default), 'token_mean', 'pair_mean' "
            "(T-SPMO default) or 'sum'. None picks the algorithm's default."
        },
    )
    alpha: int = field(default=25, metadata={"help": "S-GRPO: leading tokens always selected."})
    max_tokens: int = field(default=50, metadata={"help": "S-GRPO: at most this many tokens per completion (k)."})
    selection: str = field(
        default="sequential",
        metadata={
            "help": "S-GRPO rule for positions >= alpha: 'sequential' (the paper's: in order, each kept with "
            "probability keep_prob until max_tokens) or 'spread' (p = alpha / (L - alpha) over the whole completion)."
        },
    )
    keep_prob: float = field(
        default=0.5,
        metadata={"help": "S-GRPO sequential rule: P of keeping each position >= alpha (ours; the paper's is unread)."},
    )
    replay_prob: float = field(
        default=0.0, metadata={"help": "T-SPMO: probability a group restarts from a stored success's prefix."}
    )
    replay_buffer: int = field(default=4, metadata={"help": "T-SPMO: successful completions kept per prompt."})
    success_threshold: float = field(
        default=1.0, metadata={"help": "T-SPMO replay: a completion with reward >= this counts as a success."}
    )

    def check(self) -> None:
        """The options' values, alone (each error names the flat key); the algorithms check theirs again."""
        check_finite(self, AlgoConfig)
        require(self.max_tokens >= 1, f"max_tokens: must be >= 1 (0 selects no token to train), got {self.max_tokens}")
        check_selection_options(self.alpha, self.max_tokens, self.selection, self.keep_prob, rule_key="selection")


@dataclass
class Group:
    """One rollout group: the G completions of one prompt.

    completions: G lists of completion token ids (EOS included when generated; no padding; may be empty).
    rewards: G rewards; None leaves that completion out of the baseline and the loss.
    prompt_key: a stable key of the prompt (the replay buffer is keyed by it).
    """

    completions: list[list[int]]
    rewards: list[float | None]
    prompt_key: str = ""


@dataclass
class GroupSelection:
    """Selected tokens of one group, aligned [k] tensors.

    completion [k] int64: index of the completion within the group (0..G-1)
    position   [k] int64: token position within that completion
    token      [k] int64: the token id at that position (the log-prob target)
    advantage  [k] fp32
    weight     [k] fp32: un-normalised; the trainer divides by the batch's total norm_units
    norm_units: this group's share of the batch normaliser (e.g. completions for seq_mean, pairs for pair_mean)
    zero_std: every valid reward in the group is equal (no learning signal; logged as frac_zero_std)
    """

    completion: torch.Tensor
    position: torch.Tensor
    token: torch.Tensor
    advantage: torch.Tensor
    weight: torch.Tensor
    norm_units: float
    zero_std: bool

    def __len__(self) -> int:
        return int(self.completion.numel())


class Algorithm(ABC):
    """Turns one rollout group into selected tokens, advantages and weights.

    Subclasses are registered with `@register_algorithm(name)` and built by `get_algorithm(name, config)`.
    Hooks with defaults let T-SPMO keep a replay buffer without the trainer knowing about it.
    """

    name: str = ""
    default_loss_type: str = "seq_mean"

    def __init__(self, config: AlgoConfig | None = None) -> None:
        self.config = config or AlgoConfig()

    @property
    def loss_type(self) -> str:
        return self.config.loss_type or self.default_loss_type

    @abstractmethod
    def process_group(self, group: Group, generator: torch.Generator | None = None) -> GroupSelection:
        """Select tokens of `group` and give each its advantage and un-normalised weight."""

    def rollout_prefix(self, prompt_key: str, generator: torch.Generator | None = None) -> list[int]:
        """Token ids the group's completions continue from (after the prompt). Default: none."""
        return []

    def observe(self, group: Group) -> None:
        """See a scored group after its loss was built (T-SPMO stores successes). Default: nothing."""
        return None

    def state_dict(self) -> dict:
        """Algorithm state saved in checkpoints (T-SPMO: the replay buffer)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        return None
