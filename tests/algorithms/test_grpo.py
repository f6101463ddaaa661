"""GRPO: every token, one advantage per completion, 1/|o_i| weights; edge cases of a group."""

import random

import pytest
import torch

from tokrl.algorithms import AlgoConfig, Group, get_algorithm

EOS = 2
# o0 = 5 6 7 EOS (R=1), o1 = 5 8 (R=0, truncated, no EOS), o2 = 9 EOS EOS (R=0)
# mean 1/3; deviations [2/3, -1/3, -1/3]; sample var = (4/9 + 1/9 + 1/9) / 2 = 1/3; std = 0.5773503
# A = [2/3, -1/3, -1/3] / (0.5773503 + 1e-4) = [1.1545006, -0.5772503, -0.5772503]
HAND = Group(completions=[[5, 6, 7, EOS], [5, 8], [9, EOS, EOS]], rewards=[1.0, 0.0, 0.0], prompt_key="q")
HAND_ROWS = [0, 0, 0, 0, 1, 1, 2, 2, 2]
HAND_POS = [0, 1, 2, 3, 0, 1, 0, 1, 2]
HAND_TOKENS = [5, 6, 7, EOS, 5, 8, 9, EOS, EOS]
HAND_ADV = [1.1545006] * 4 + [-0.5772503] * 5


def process(group, **config):
    return get_algorithm("grpo", AlgoConfig(**config)).process_group(group, torch.Generator().manual_seed(0))


def test_hand_computed_seq_mean():
    sel = process(HAND)
    assert sel.completion.tolist() == HAND_ROWS
    assert sel.position.tolist() == HAND_POS
    assert sel.token.tolist() == HAND_TOKENS  # EOS is selected like any other token
    torch.testing.assert_close(sel.advantage, torch.tensor(HAND_ADV), rtol=1e-6, atol=0)
    # weight 1/|o_i|: 1/4 x4, 1/2 x2, 1/3 x3; norm_units = 3 valid completions
    torch.testing.assert_close(sel.weight, torch.tensor([1 / 4] * 4 + [1 / 2] * 2 + [1 / 3] * 3))
    assert sel.norm_units == 3.0 and sel.zero_std is False and len(sel) == 9
    for t in (sel.completion, sel.position, sel.token):
        assert t.dtype == torch.int64 and t.device.type == "cpu"
    assert sel.advantage.dtype == torch.float32 and sel.weight.dtype == torch.float32


def test_token_mean_and_sum():
    sel = process(HAND, loss_type="token_mean")
    assert sel.weight.tolist() == [1.0] * 9 and sel.norm_units == 9.0  # 4 + 2 + 3 selected tokens
    sel = process(HAND, loss_type="sum")
    assert sel.weight.tolist() == [1.0] * 9 and sel.norm_units == 0.0


def test_unscaled_rewards():
    sel = process(HAND, scale_rewards=False)  # A = R - 1/3
    torch.testing.assert_close(sel.advantage, torch.tensor([2 / 3] * 4 + [-1 / 3] * 5))


def test_none_reward_is_out_of_baseline_and_loss():
    # valid R = [1, 0] (rows 0, 2): mean 1/2, sample std = sqrt(2 * 0.25 / 1) = 0.7071068,
    # A = +-0.5 / (0.7071068 + 1e-4) = +-0.7070068; row 1 gets nothing; norm_units = 2 valid completions.
    sel = process(Group([[1, 2], [3], [4, 5, 6]], [1.0, None, 0.0]))
    assert sel.completion.tolist() == [0, 0, 2, 2, 2]
    torch.testing.assert_close(sel.advantage, torch.tensor([0.7070068] * 2 + [-0.7070068] * 3), rtol=1e-6, atol=0)
    torch.testing.assert_close(sel.weight, torch.tensor([1 / 2] * 2 + [1 / 3] * 3))
    assert sel.norm_units == 2.0


def test_empty_completion_counts_in_baseline_but_selects_nothing():
    # R = [0, 1]: mean 1/2, A = [-0.7070068, +0.7070068]; the empty o0 has no token to select.
    sel = process(Group([[], [1, EOS]], [0.0, 1.0]))
    assert sel.completion.tolist() == [1, 1] and sel.position.tolist() == [0, 1]
    torch.testing.assert_close(sel.advantage, torch.tensor([0.7070068] * 2), rtol=1e-6, atol=0)
    assert sel.norm_units == 2.0  # both completions count in the mean over completions
    assert process(Group([[], [1, EOS]], [0.0, 1.0]), loss_type="token_mean").norm_units == 2.0


@pytest.mark.parametrize(
    ("rewards", "seq_units", "token_units"),
    [
        ([1.0, 1.0, 1.0], 3, 9),  # all equal
        ([0.1, 0.1, 0.1], 3, 9),  # all equal, not representable
        ([0.0, None, 0.0], 2, 7),  # equal among the valid ones: rows 0 and 2 have 4 + 3 tokens
        ([None, None, None], 0, 0),  # nothing valid
        ([None, 1.0, None], 1, 2),  # a single valid reward
    ],
)
def test_zero_std_group_is_empty_but_still_counted(rewards, seq_units, token_units):
    group = Group(HAND.completions, rewards)
    sel = process(group)
    assert len(sel) == 0 and sel.zero_std is True and sel.norm_units == seq_units
    assert sel.completion.dtype == torch.int64 and sel.weight.dtype == torch.float32
    assert process(group, loss_type="token_mean").norm_units == token_units


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_raises_naming_the_reward(bad):
    with pytest.raises(
        ValueError, match=f"reward function 'reward' returned a non-finite reward {bad} for completion 1"
    ):
        process(Group([[1], [2]], [0.0, bad]))


def test_mismatched_rewards_raise():
    with pytest.raises(ValueError, match="2 completions but 3 rewards"):
        process(Group([[1], [2]], [0.0, 1.0, 0.0]))


def test_random_groups_select_exactly_the_valid_tokens():
    rng = random.Random(7)
    for _ in range(50):
        g = rng.randint(1, 8)
        completions = [[rng.randrange(50) for _ in range(rng.randint(0, 12))] for _ in range(g)]
        rewards = [None if rng.random() < 0.2 else float(rng.randint(0, 1)) for _ in range(g)]
        sel = process(Group(completions, rewards))
        valid = [i for i in range(g) if rewards[i] is not None]
        if sel.zero_std:
            assert len(sel) == 0
            continue
        expected = [(i, t) for i in valid for t in range(len(completions[i]))]
        assert list(zip(sel.completion.tolist(), sel.position.tolist(), strict=True)) == expected
        assert sel.token.tolist() == [completions[i][t] for i, t in expected]
        # per non-empty completion the weights sum to 1: the loss is a mean over completions
        sums = torch.zeros(g).index_add_(0, sel.completion, sel.weight)
        assert sums.tolist() == pytest.approx(
            [1.0 if rewards[i] is not None and completions[i] else 0.0 for i in range(g)]
        )
