"""T-SPMO: one row per informative (prefix, next token) pair, pair_mean weights, and prefix replay."""

import json
import math

import pytest
import torch

from tokrl.algorithms import AlgoConfig, Group, get_algorithm

EOS = 0


def make(**config):
    return get_algorithm("t-spmo", AlgoConfig(**config))


def test_hand_computed_selection():
    # o0 = 1 2 3 (R=1), o1 = 1 2 4 (R=0), o2 = 1 5 (R=1), o3 = 6 (R=0); root mean 1/2.
    # ->1: 2/3 - 1/2 = 1/6 at (0,0);  [1]->2: 1/2 - 2/3 = -1/6 at (0,1);  [1 2]->3: 1 - 1/2 = 1/2 at (0,2);
    # [1 2]->4: 0 - 1/2 at (1,2);  [1]->5: 1 - 2/3 = 1/3 at (2,1);  ->6: 0 - 1/2 at (3,0).  6 pairs, weight 1.
    sel = make().process_group(Group([[1, 2, 3], [1, 2, 4], [1, 5], [6]], [1.0, 0.0, 1.0, 0.0], "q"))
    assert sel.completion.tolist() == [0, 0, 0, 1, 2, 3]
    assert sel.position.tolist() == [0, 1, 2, 2, 1, 0]
    assert sel.token.tolist() == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(sel.advantage, torch.tensor([1 / 6, -1 / 6, 1 / 2, -1 / 2, 1 / 3, -1 / 2]))
    assert sel.weight.tolist() == [1.0] * 6 and sel.norm_units == 6.0 and sel.zero_std is False
    assert sel.advantage.dtype == torch.float32 and sel.position.dtype == torch.int64


def test_sum_loss_type():
    sel = make(loss_type="sum").process_group(Group([[1, 2], [1, 3]], [1.0, 0.0]))
    assert sel.weight.tolist() == [1.0, 1.0] and sel.norm_units == 0.0


def test_eos_pair_is_selected():
    # o0 = 7 EOS (R=1), o1 = 7 8 EOS (R=0): after the shared 7 (mean 1/2), EOS gets +1/2 at (0, 1).
    sel = make().process_group(Group([[7, EOS], [7, 8, EOS]], [1.0, 0.0]))
    assert list(zip(sel.completion.tolist(), sel.position.tolist(), sel.token.tolist(), strict=True)) == [
        (0, 1, EOS),
        (1, 1, 8),
    ]
    torch.testing.assert_close(sel.advantage, torch.tensor([0.5, -0.5]))


def test_none_and_empty_completions():
    # o0 has no reward (never selected); o1 = [] (R=0) counts in the root mean: R valid = [0, 1, 0], mean 1/3.
    # ->1 (o2, R=1): 1 - 1/3 = 2/3 at (2, 0); ->2 (o3, R=0): -1/3 at (3, 0). norm_units = 2 pairs.
    sel = make().process_group(Group([[1, 9], [], [1], [2]], [None, 0.0, 1.0, 0.0]))
    assert sel.completion.tolist() == [2, 3] and sel.position.tolist() == [0, 0]
    torch.testing.assert_close(sel.advantage, torch.tensor([2 / 3, -1 / 3]))
    assert sel.norm_units == 2.0


@pytest.mark.parametrize(
    ("rewards", "zero_std"),
    [([1.0, 1.0], True), ([None, 0.0], True), ([None, None], True), ([1.0, 0.0], False)],
)
def test_groups_without_pairs(rewards, zero_std):
    # Identical completions never branch, so even differing rewards give no pair (but are not zero_std).
    sel = make().process_group(Group([[1, 2], [1, 2]], rewards))
    assert len(sel) == 0 and sel.norm_units == 0.0 and sel.zero_std is zero_std


def test_non_finite_reward_raises():
    with pytest.raises(ValueError, match="reward function 'reward' returned a non-finite reward nan for completion 1"):
        make().process_group(Group([[1], [2]], [0.0, float("nan")]))


def test_observe_stores_successes_with_the_prefix_used():
    algo = make(replay_prob=1.0, replay_buffer=4, success_threshold=1.0)
    gen = torch.Generator().manual_seed(0)
    assert algo.rollout_prefix("q", gen) == []  # nothing stored yet
    algo.observe(Group([[1, 2, 3, 4, 5], [9, 9]], [1.0, 0.0], "q"))
    assert algo.replay.completions("q") == [[1, 2, 3, 4, 5]]  # only the success
    prefixes = []
    for _ in range(30):
        prefix = algo.rollout_prefix("q", gen)  # replay_prob = 1: always a cut of the stored success
        assert prefix == [1, 2, 3, 4, 5][: len(prefix)]
        prefixes.append(prefix)
        algo.observe(Group([[7]], [0.0], "q"))  # a failure: nothing stored, the pending prefix is consumed
    assert {len(p) for p in prefixes} == {0, 1, 2, 3, 4}
    while len(prefix := algo.rollout_prefix("q", gen)) != 3:
        algo.observe(Group([[7]], [0.0], "q"))
    algo.observe(Group([[8, EOS]], [1.0], "q"))
    assert algo.replay.completions("q") == [[1, 2, 3, 4, 5], [1, 2, 3, 8, EOS]]  # prefix + continuation


def test_pending_prefixes_are_fifo_per_prompt():
    algo = make(replay_prob=1.0)
    algo.replay.add("q", [4, 5, 6, 7, 8, 9], 1.0)
    gen = torch.Generator().manual_seed(2)
    first, second = algo.rollout_prefix("q", gen), algo.rollout_prefix("q", gen)
    assert algo.rollout_prefix("other", gen) == []
    algo.observe(Group([[1]], [1.0], "q"))
    algo.observe(Group([[2]], [1.0], "q"))
    algo.observe(Group([[3]], [1.0], "other"))
    assert first != second  # this seed draws two different cuts, so the order is observable
    assert algo.replay.completions("q") == [[4, 5, 6, 7, 8, 9], first + [1], second + [2]]
    assert algo.replay.completions("other") == [[3]]
    algo.observe(Group([[5]], [1.0], "q"))  # no pending prefix: stored as is
    assert algo.replay.completions("q")[-1] == [5]


def test_replay_probability():
    # replay_prob = 0.5 and one stored success of length 10: a non-empty prefix needs the coin (1/2) and a cut
    # c >= 1 (9/10): P = 0.45.
    algo = make(replay_prob=0.5)
    algo.replay.add("q", list(range(10, 20)), 1.0)
    gen = torch.Generator().manual_seed(3)
    n = 4000
    hits = 0
    for _ in range(n):
        hits += bool(algo.rollout_prefix("q", gen))
        algo.observe(Group([[1]], [0.0], "q"))
    assert abs(hits / n - 0.45) <= 5 * math.sqrt(0.45 * 0.55 / n)


def test_no_replay_draws_no_randomness():
    algo = make(replay_prob=0.0)
    algo.replay.add("q", [1, 2, 3], 1.0)
    gen = torch.Generator().manual_seed(4)
    before = gen.get_state()
    assert algo.rollout_prefix("q", gen) == []
    assert torch.equal(gen.get_state(), before)


def test_state_dict_round_trips_through_json():
    algo = make(replay_prob=0.5, replay_buffer=2)
    algo.observe(Group([[1, 2], [3, 4], [5]], [1.0, 1.0, 1.0], "a"))  # capacity 2: [1, 2] is evicted
    algo.observe(Group([[6, 7]], [1.0], "b"))
    state = json.loads(json.dumps(algo.state_dict()))
    other = make(replay_prob=0.5, replay_buffer=2)
    other.load_state_dict(state)
    assert other.replay.completions("a") == [[3, 4], [5]]
    assert other.replay.completions("b") == [[6, 7]]
    assert other.state_dict() == algo.state_dict() and len(other.replay) == 3
