"""The name -> algorithm registry, the package's exports and loss-type checks."""

import pytest
import torch

import tokrl.algorithms as algorithms
from tokrl.algorithms import AlgoConfig, Algorithm, Group, GroupSelection, get_algorithm, register_algorithm
from tokrl.algorithms import registry as registry_module
from tokrl.algorithms.grpo import GRPO
from tokrl.algorithms.s_grpo import SGRPO
from tokrl.algorithms.t_spmo import TSPMO

EXPORTS = [
    "register_algorithm",
    "get_algorithm",
    "available_algorithms",
    "Algorithm",
    "AlgoConfig",
    "Group",
    "GroupSelection",
    "group_advantages",
    "sample_positions",
    "prefix_pairs",
    "PrefixPair",
    "ReplayBuffer",
    "validate_rewards",
]


@pytest.mark.parametrize("name", EXPORTS)
def test_public_names_are_exported(name):
    assert name in algorithms.__all__
    assert getattr(algorithms, name) is not None


def test_the_three_algorithms_are_registered():
    assert {"grpo", "s-grpo", "t-spmo"} <= set(algorithms.available_algorithms())
    assert algorithms.available_algorithms() == sorted(algorithms.available_algorithms())


@pytest.mark.parametrize(
    ("name", "cls", "loss_type"),
    [("grpo", GRPO, "seq_mean"), ("s-grpo", SGRPO, "seq_mean"), ("t-spmo", TSPMO, "pair_mean")],
)
def test_get_algorithm_builds_the_class_with_its_config(name, cls, loss_type):
    config = AlgoConfig(alpha=7)
    algo = get_algorithm(name, config)
    assert type(algo) is cls and algo.name == name
    assert algo.config is config
    assert algo.loss_type == loss_type  # loss_type=None picks the algorithm's default
    assert isinstance(get_algorithm(name).config, AlgoConfig)  # None -> defaults


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="algorithm: unknown 'ppo'") as info:
        get_algorithm("ppo")
    for name in ("grpo", "s-grpo", "t-spmo"):
        assert name in str(info.value)


def test_register_a_new_algorithm_and_refuse_a_clash(monkeypatch):
    monkeypatch.setattr(registry_module, "ALGORITHMS", dict(registry_module.ALGORITHMS))

    @register_algorithm("nothing")
    class Nothing(Algorithm):
        def process_group(self, group: Group, generator: torch.Generator | None = None) -> GroupSelection:
            raise NotImplementedError

    assert isinstance(get_algorithm("nothing"), Nothing)
    assert "nothing" in registry_module.available_algorithms()
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("nothing")(GRPO)
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("grpo")(Nothing)


@pytest.mark.parametrize(
    ("name", "bad"), [("grpo", "pair_mean"), ("s-grpo", "mean"), ("t-spmo", "seq_mean"), ("t-spmo", "token_mean")]
)
def test_unsupported_loss_type_is_refused_at_construction(name, bad):
    with pytest.raises(ValueError, match=f"unknown loss_type {bad!r}"):
        get_algorithm(name, AlgoConfig(loss_type=bad))


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("s-grpo", AlgoConfig(alpha=-1)),
        ("s-grpo", AlgoConfig(max_tokens=-1)),
        ("t-spmo", AlgoConfig(replay_prob=1.5)),
        ("t-spmo", AlgoConfig(replay_buffer=-1)),
    ],
)
def test_invalid_options_are_refused(name, config):
    with pytest.raises(ValueError):
        get_algorithm(name, config)
