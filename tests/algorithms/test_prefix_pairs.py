"""prefix_pairs: a hand-computed trie, edge cases, and a brute-force enumeration of every prefix."""

import random
import time
from fractions import Fraction

import pytest

from tokrl.algorithms import PrefixPair, prefix_pairs

EOS = 0

# o0 = 1 2 3 (R=1), o1 = 1 2 4 (R=0), o2 = 1 5 (R=1), o3 = 6 (R=0)
HAND_COMPLETIONS = [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
HAND_REWARDS = [1.0, 0.0, 1.0, 0.0]
# root: S = {0,1,2,3}, mean 1/2
#   ->1:  S = {0,1,2}, mean 2/3: A = 2/3 - 1/2 = 1/6,  at (0, 0), count 3
#   ->6:  S = {3},     mean 0:   A = 0 - 1/2 = -1/2,   at (3, 0), count 1
# [1]: mean 2/3
#   ->2:  S = {0,1},   mean 1/2: A = 1/2 - 2/3 = -1/6, at (0, 1), count 2
#   ->5:  S = {2},     mean 1:   A = 1 - 2/3 = 1/3,    at (2, 1), count 1
# [1 2]: mean 1/2
#   ->3:  S = {0}: A = 1 - 1/2 = 1/2 at (0, 2);  ->4: S = {1}: A = 0 - 1/2 = -1/2 at (1, 2)
HAND_EXPECTED = [
    PrefixPair(0, 0, 1, 1 / 6, 3),
    PrefixPair(0, 1, 2, -1 / 6, 2),
    PrefixPair(0, 2, 3, 1 / 2, 1),
    PrefixPair(1, 2, 4, -1 / 2, 1),
    PrefixPair(2, 1, 5, 1 / 3, 1),
    PrefixPair(3, 0, 6, -1 / 2, 1),
]


def assert_pairs_equal(got, expected):
    assert [(p.row, p.pos, p.token, p.count) for p in got] == [(p.row, p.pos, p.token, p.count) for p in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.advantage == pytest.approx(e.advantage, rel=1e-12, abs=1e-15)


def test_hand_computed_trie():
    assert_pairs_equal(prefix_pairs(HAND_COMPLETIONS, HAND_REWARDS), HAND_EXPECTED)


def test_none_reward_is_left_out_of_the_trie():
    # A None-reward copy of o0 in front: it must not change any mean, nor be anyone's representative.
    got = prefix_pairs([[1, 2, 3], *HAND_COMPLETIONS], [None, *HAND_REWARDS])
    shifted = [p._replace(row=p.row + 1) for p in HAND_EXPECTED]
    assert_pairs_equal(got, shifted)


def test_empty_completion_counts_in_the_root_baseline():
    # o0 = 1 (R=1), o1 = [] (R=0), o2 = 2 (R=0): root mean 1/3 includes the empty one.
    # ->1: A = 1 - 1/3 = 2/3 at (0, 0);  ->2: A = 0 - 1/3 = -1/3 at (2, 0). No pair for the empty one.
    got = prefix_pairs([[1], [], [2]], [1.0, 0.0, 0.0])
    assert_pairs_equal(got, [PrefixPair(0, 0, 1, 2 / 3, 1), PrefixPair(2, 0, 2, -1 / 3, 1)])


def test_eos_is_an_ordinary_token():
    # o0 = 7 EOS (R=1), o1 = 7 8 EOS (R=0). ->7 is shared (A = 0). After [7] (mean 1/2): EOS gets +1/2 at
    # (0, 1), 8 gets -1/2 at (1, 1). [7 8] -> EOS is reached by o1 alone: A = 0.
    got = prefix_pairs([[7, EOS], [7, 8, EOS]], [1.0, 0.0])
    assert_pairs_equal(got, [PrefixPair(0, 1, EOS, 1 / 2, 1), PrefixPair(1, 1, 8, -1 / 2, 1)])


def test_a_completion_ending_inside_another_counts_at_its_last_node():
    # o0 = 1 (R=1), o1 = 1 2 (R=0). ->1: shared by both, A = 0. [1] (mean 1/2) -> 2: S = {1}: A = -1/2.
    assert_pairs_equal(prefix_pairs([[1], [1, 2]], [1.0, 0.0]), [PrefixPair(1, 1, 2, -1 / 2, 1)])


@pytest.mark.parametrize(
    ("completions", "rewards"),
    [
        ([[1, 2], [1, 3]], [1.0, 1.0]),  # equal rewards: no signal
        ([[1, 2], [1, 2]], [1.0, 0.0]),  # identical completions: every edge is shared
        ([[1, 2], [3]], [1.0, None]),  # one valid completion
        ([[1], [2]], [None, None]),  # none valid
        ([], []),  # empty group
        ([[1, 2], [1, 3], [4]], [0.1, 0.1, 0.1]),  # equal non-representable rewards: sums leave residue
    ],
)
def test_no_signal_gives_no_pairs(completions, rewards):
    assert prefix_pairs(completions, rewards) == []


def test_equal_means_of_decimal_rewards_are_zero():
    # [1] is reached by R = 0.1, 0.3 (mean 0.2) and [2] by R = 0.2: root mean 0.2, so ->1 and ->2 have A = 0
    # in exact arithmetic although 0.1 + 0.3 != 2 * 0.2 in floats. Below [1]: ->5 +0.1, ->6 -0.1.
    got = prefix_pairs([[1, 5], [1, 6], [2]], [0.3, 0.1, 0.2])
    assert_pairs_equal(got, [PrefixPair(0, 1, 5, 0.1, 1), PrefixPair(1, 1, 6, -0.1, 1)])


def test_non_finite_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="non-finite reward nan for completion 1"):
        prefix_pairs([[1], [2]], [0.0, float("nan")])
    with pytest.raises(ValueError, match="2 completions but 1 rewards"):
        prefix_pairs([[1], [2]], [0.0])


def brute_force(completions, rewards):
    """Enumerate every (prefix, next token) of every valid completion; exact means with Fractions."""
    valid = [i for i, r in enumerate(rewards) if r is not None]
    exact = {i: Fraction(repr(rewards[i])) for i in valid}  # the decimal the reward stands for

    def mean_through(prefix):
        rows = [
            i for i in valid if tuple(completions[i][: len(prefix)]) == prefix and len(completions[i]) >= len(prefix)
        ]
        return rows, sum(exact[i] for i in rows) / len(rows)

    seen = {}
    for i in valid:
        for t in range(len(completions[i])):
            key = (tuple(completions[i][:t]), completions[i][t])
            if key in seen:
                continue
            _, base = mean_through(key[0])
            rows, through = mean_through(key[0] + (key[1],))
            if through != base:
                seen[key] = PrefixPair(min(rows), t, key[1], float(through - base), len(rows))
            else:
                seen[key] = None
    return sorted((p for p in seen.values() if p is not None), key=lambda p: (p.row, p.pos))


REWARD_POOLS = {
    "binary": [0.0, 1.0],
    "halves": [0.0, 0.5, 1.0],
    "decimals": [0.1, 0.2, 0.3, 0.6, -0.4],
    "uniform": None,
}


@pytest.mark.parametrize("pool", REWARD_POOLS)
def test_matches_brute_force_on_random_groups(pool):
    rng = random.Random(sorted(REWARD_POOLS).index(pool))
    for _ in range(300):
        g = rng.randint(1, 8)
        vocab = rng.randint(2, 4)  # a small vocabulary makes prefixes shared and branch at many depths
        completions = [[rng.randrange(vocab) for _ in range(rng.randint(0, 7))] for _ in range(g)]
        values = REWARD_POOLS[pool]
        rewards = [
            None if rng.random() < 0.15 else (rng.choice(values) if values else rng.uniform(-2, 2)) for _ in range(g)
        ]
        got = prefix_pairs(completions, rewards)
        expected = brute_force(completions, rewards)
        assert [(p.row, p.pos, p.token, p.count) for p in got] == [(p.row, p.pos, p.token, p.count) for p in expected]
        for gp, ep in zip(got, expected, strict=True):
            assert gp.advantage == pytest.approx(ep.advantage, rel=1e-9, abs=1e-12)
            assert completions[gp.row][gp.pos] == gp.token and rewards[gp.row] is not None


def test_linear_time_on_a_large_group():
    # 16 completions x 4000 tokens: a trie does 64k dict steps (well under a second in Python); enumerating
    # prefixes by comparison would need ~16 * 16 * 4000^2 / 2 token comparisons.
    rng = random.Random(0)
    completions = [[rng.randrange(2) for _ in range(4000)] for _ in range(16)]
    rewards = [float(i % 2) for i in range(16)]
    start = time.perf_counter()
    pairs = prefix_pairs(completions, rewards)
    elapsed = time.perf_counter() - start
    assert pairs and elapsed < 5.0
