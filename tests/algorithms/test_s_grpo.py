"""S-GRPO: GRPO's advantages on sampled positions, 1/(selected tokens) weights, reproducible draws."""

import random

import pytest
import torch

from tokrl.algorithms import AlgoConfig, Group, get_algorithm, sample_positions
from tokrl.algorithms.sequence import SequenceAdvantageAlgorithm

EOS = 2


def process(group, seed=0, **config):
    return get_algorithm("s-grpo", AlgoConfig(**config)).process_group(group, torch.Generator().manual_seed(seed))


def rows_of(sel, g):
    return [sel.position[sel.completion == i].tolist() for i in range(g)]


def test_hand_computed_with_cap_spread():
    # The spread rule, alpha = 2, max_tokens = 3.
    # o0 = 5 6 7 EOS (L=4): p = min(1, 2 / 2) = 1 selects 0..3, 4 > 3 so keep 0, 1 and one of {2, 3}.
    # o1 = 5 8 (L=2 <= alpha): positions 0, 1.   o2 = 9 EOS EOS (L=3): p = min(1, 2/1) = 1, positions 0, 1, 2.
    # R = [1, 0, 0]: A = [1.1545006, -0.5772503, -0.5772503] (as in GRPO: sample std 0.5773503).
    # Weights 1 / selected: 1/3, 1/2, 1/3; norm_units = 3 valid completions.
    group = Group([[5, 6, 7, EOS], [5, 8], [9, EOS, EOS]], [1.0, 0.0, 0.0])
    seen_third = set()
    for seed in range(40):
        sel = process(group, seed=seed, alpha=2, max_tokens=3, selection="spread")
        r0, r1, r2 = rows_of(sel, 3)
        assert r0[:2] == [0, 1] and len(r0) == 3 and r0[2] in (2, 3)
        seen_third.add(r0[2])
        assert r1 == [0, 1] and r2 == [0, 1, 2]  # EOS at o2's positions 1, 2 is selected
        torch.testing.assert_close(sel.weight, torch.tensor([1 / 3] * 3 + [1 / 2] * 2 + [1 / 3] * 3))
        torch.testing.assert_close(sel.advantage, torch.tensor([1.1545006] * 3 + [-0.5772503] * 5), rtol=1e-6, atol=0)
        assert sel.norm_units == 3.0
        assert sel.token.tolist() == [
            group.completions[i][t] for i, t in zip(sel.completion.tolist(), sel.position.tolist(), strict=True)
        ]
    assert seen_third == {2, 3}  # the kept later position is random


def test_hand_computed_sequential():
    # The sequential rule, alpha = 2, max_tokens = 3, P = 0.5. o0 = 5 6 7 EOS (L=4): 0, 1, then position 2 if its
    # draw passes, else position 3 if its draw passes, else nothing more: [0,1,2], [0,1,3] or [0,1].
    # o1 (L=2) and o2 (L=3): 0, 1 always; o2's position 2 with P. Weights 1 / selected per completion.
    group = Group([[5, 6, 7, EOS], [5, 8], [9, EOS, EOS]], [1.0, 0.0, 0.0])
    seen = set()
    for seed in range(60):
        sel = process(group, seed=seed, alpha=2, max_tokens=3)
        r0, r1, r2 = rows_of(sel, 3)
        assert r0 in ([0, 1, 2], [0, 1, 3], [0, 1]) and r1 == [0, 1] and r2 in ([0, 1], [0, 1, 2])
        seen.add(tuple(r0))
        want = [1 / len(r0)] * len(r0) + [1 / 2] * 2 + [1 / len(r2)] * len(r2)
        torch.testing.assert_close(sel.weight, torch.tensor(want))
        assert sel.norm_units == 3.0
    assert seen == {(0, 1, 2), (0, 1, 3), (0, 1)}  # each branch of the walk happens
    # P = 1: every draw passes, so the earliest positions are kept.
    sel = process(group, seed=0, alpha=2, max_tokens=3, keep_prob=1.0)
    assert rows_of(sel, 3) == [[0, 1, 2], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize(("field", "value"), [("selection", "uniform"), ("keep_prob", 0.0), ("keep_prob", 1.5)])
def test_bad_selection_options_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        get_algorithm("s-grpo", AlgoConfig(**{field: value}))


def test_alpha_at_least_every_length_equals_grpo():
    group = Group([[3, 4, 5, EOS], [3, 9], [7]], [0.0, 1.0, 0.5])
    s = process(group, alpha=10, max_tokens=10)
    g = get_algorithm("grpo").process_group(group)
    for name in ("completion", "position", "token", "advantage", "weight"):
        assert torch.equal(getattr(s, name), getattr(g, name)), name
    assert s.norm_units == g.norm_units == 3.0


def test_selection_follows_sample_positions_in_group_order():
    # The same generator stream, drawn completion by completion (None rewards draw nothing).
    rng = random.Random(1)
    completions = [[rng.randrange(30) for _ in range(rng.randint(0, 80))] for _ in range(6)]
    rewards = [1.0, None, 0.0, 1.0, 0.0, None]
    sel = process(Group(completions, rewards), seed=9, alpha=5, max_tokens=12)
    gen = torch.Generator().manual_seed(9)
    expected = [
        sample_positions(len(c), 5, 12, gen).tolist() if r is not None else []
        for c, r in zip(completions, rewards, strict=True)
    ]
    assert rows_of(sel, 6) == expected


def test_loss_types():
    group = Group([[1, 2, 3, 4, 5, 6], [1, 2, 3]], [1.0, 0.0])
    seq = process(group, alpha=2, max_tokens=4)
    tok = process(group, alpha=2, max_tokens=4, loss_type="token_mean")
    total = process(group, alpha=2, max_tokens=4, loss_type="sum")
    assert torch.equal(seq.position, tok.position)  # same seed, same draws
    assert tok.weight.tolist() == [1.0] * len(tok) and tok.norm_units == len(tok)
    assert total.weight.tolist() == [1.0] * len(total) and total.norm_units == 0.0
    assert seq.norm_units == 2.0


def test_zero_std_group_is_empty_and_consumes_the_same_draws():
    # A zero-std group still draws its positions, so the next group's selection is independent of rewards.
    first = [[1] * 60, [2] * 70]
    nxt = Group([[3] * 90, [4] * 40], [1.0, 0.0])
    algo = get_algorithm("s-grpo", AlgoConfig(alpha=5, max_tokens=20))
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    flat = algo.process_group(Group(first, [1.0, 1.0]), gen_a)
    informative = algo.process_group(Group(first, [1.0, 0.0]), gen_b)
    assert len(flat) == 0 and flat.zero_std and flat.norm_units == 2.0
    assert len(informative) > 0 and not informative.zero_std
    assert torch.equal(algo.process_group(nxt, gen_a).position, algo.process_group(nxt, gen_b).position)
    tok = get_algorithm("s-grpo", AlgoConfig(alpha=5, max_tokens=20, loss_type="token_mean"))
    assert tok.process_group(Group(first, [1.0, 1.0]), torch.Generator().manual_seed(3)).norm_units == len(informative)


def test_none_and_empty_completions():
    # R valid = [0 (empty o0), 1 (o2)]; o1 has no reward. Only o2 selects tokens; both valid ones count.
    sel = process(Group([[], [1, 2, 3], [4, 5, EOS]], [0.0, None, 1.0]), alpha=1, max_tokens=5)
    assert set(sel.completion.tolist()) == {2}
    assert sel.position[0].item() == 0 and sel.norm_units == 2.0
    torch.testing.assert_close(sel.advantage, torch.full((len(sel),), 0.7070068), rtol=1e-6, atol=0)


def test_non_finite_reward_raises():
    with pytest.raises(ValueError, match="reward function 'reward' returned a non-finite reward inf for completion 0"):
        process(Group([[1], [2]], [float("inf"), 0.0]))


def test_random_groups_respect_the_rule_and_reproduce():
    rng = random.Random(5)
    for trial in range(30):
        g = rng.randint(2, 8)
        completions = [[rng.randrange(50) for _ in range(rng.randint(0, 150))] for _ in range(g)]
        rewards = [None if rng.random() < 0.2 else float(rng.randint(0, 1)) for _ in range(g)]
        group = Group(completions, rewards)
        sel = process(group, seed=trial, alpha=25, max_tokens=50)
        assert torch.equal(sel.position, process(group, seed=trial).position)  # defaults are 25 / 50
        for i, pos in enumerate(rows_of(sel, g)):
            if not pos:
                continue
            assert rewards[i] is not None
            assert pos == sorted(set(pos)) and len(pos) <= 50 and pos[-1] < len(completions[i])
            assert pos[: min(25, len(completions[i]))] == list(range(min(25, len(completions[i]))))
            weights = sel.weight[sel.completion == i]
            assert torch.allclose(weights, torch.full_like(weights, 1 / len(pos)))


def test_batched_group_draws_equal_the_per_completion_path():
    # SGRPO draws a group's positions at once (select_group_positions); the base class's default calls
    # select_positions per completion. Same generator, same selection, tensor for tensor.
    class PerCompletion(get_algorithm("s-grpo").__class__):
        select_group_positions = SequenceAdvantageAlgorithm.select_group_positions

    rng = random.Random(7)
    for trial in range(40):
        g = rng.randint(2, 8)
        completions = [[rng.randrange(50) for _ in range(rng.randint(0, 12))] for _ in range(g)]
        rewards = [None if rng.random() < 0.2 else float(rng.randint(0, 2)) for _ in range(g)]
        config = AlgoConfig(
            alpha=rng.randint(0, 4), max_tokens=rng.randint(1, 8), keep_prob=rng.choice([0.3, 0.75, 1.0])
        )
        batched = get_algorithm("s-grpo", config).process_group(
            Group(completions, rewards), torch.Generator().manual_seed(trial)
        )
        single = PerCompletion(config).process_group(Group(completions, rewards), torch.Generator().manual_seed(trial))
        for name in ("completion", "position", "token", "advantage", "weight"):
            got, want = getattr(batched, name), getattr(single, name)
            assert got.dtype == want.dtype and torch.equal(got, want), (trial, name)
        assert (batched.norm_units, batched.zero_std) == (single.norm_units, single.zero_std)
