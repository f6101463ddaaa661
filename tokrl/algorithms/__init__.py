"""Token selection, advantages and loss weights for GRPO, S-GRPO and T-SPMO, behind one registry.

Importing this package registers "grpo", "s-grpo" and "t-spmo"; the trainer builds one with
`get_algorithm(name, config)` and calls the `Algorithm` hooks without branching on the name.
"""

from tokrl.algorithms import grpo, s_grpo, t_spmo  # noqa: F401  (import registers the algorithms)
from tokrl.algorithms.advantages import group_advantages, validate_rewards
from tokrl.algorithms.base import AlgoConfig, Algorithm, Group, GroupSelection
from tokrl.algorithms.prefix import PrefixPair, prefix_pairs
from tokrl.algorithms.registry import available_algorithms, get_algorithm, register_algorithm
from tokrl.algorithms.replay import ReplayBuffer
from tokrl.algorithms.sampling import sample_positions

__all__ = [
    "AlgoConfig",
    "Algorithm",
    "Group",
    "GroupSelection",
    "PrefixPair",
    "ReplayBuffer",
    "available_algorithms",
    "get_algorithm",
    "group_advantages",
    "prefix_pairs",
    "register_algorithm",
    "sample_positions",
    "validate_rewards",
]
