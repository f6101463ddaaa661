"""group_advantages (sample std, like TRL) and validate_rewards."""

import pytest
import torch

from tokrl.algorithms import group_advantages, validate_rewards


def test_sample_std_is_used():
    # R = [2, 0, 1]: mean 1, deviations [1, -1, 0], sample var = (1 + 1 + 0) / (3 - 1) = 1, std = 1,
    # so A = [1, -1, 0] / (1 + 1e-4). The population std sqrt(2/3) would give +-1.2245 instead.
    adv = group_advantages([2.0, 0.0, 1.0])
    expected = torch.tensor([1 / 1.0001, -1 / 1.0001, 0.0])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=0)


def test_binary_rewards_by_hand():
    # R = [1, 0, 0, 1]: mean 0.5, deviations +-0.5, sample var = 4 * 0.25 / 3 = 1/3, std = 0.5773503,
    # A = +-0.5 / (0.5773503 + 1e-4) = +-0.8658754.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(adv, torch.tensor([0.8658754, -0.8658754, -0.8658754, 0.8658754]), rtol=1e-6, atol=0)
    assert adv.dtype == torch.float32 and adv.shape == (4,)


def test_matches_torch_std_on_random_rewards():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        r = torch.rand(int(torch.randint(2, 16, (1,), generator=gen)), generator=gen, dtype=torch.float64) * 5 - 2
        expected = (r - r.mean()) / (torch.std(r) + 1e-4)  # torch.std default: unbiased, as in TRL
        torch.testing.assert_close(group_advantages(r), expected.float(), rtol=1e-6, atol=1e-7)


def test_unscaled_is_centred_only():
    # R = [2, 0, 1] - mean 1 = [1, -1, 0] (Dr. GRPO).
    assert group_advantages([2.0, 0.0, 1.0], scale=False).tolist() == [1.0, -1.0, 0.0]


@pytest.mark.parametrize(
    "rewards", [[0.1, 0.1, 0.1], [1.0] * 8, [5.0], [-3.5, -3.5]], ids=["tenths", "ones", "single", "neg"]
)
def test_equal_rewards_give_exact_zeros(rewards):
    # 0.1 * 3 / 3 != 0.1 in floating point: without the explicit check the residue would be scaled up by 1/1e-4.
    for scale in (True, False):
        adv = group_advantages(rewards, scale=scale)
        assert adv.tolist() == [0.0] * len(rewards)


def test_empty_group():
    assert group_advantages([]).shape == (0,)


def test_non_finite_tensor_is_refused():
    with pytest.raises(ValueError, match="finite"):
        group_advantages([1.0, float("nan")])


def test_validate_accepts_none_and_finite_numbers_and_refuses_bools():
    assert validate_rewards([1.0, None, 0, -2.5, 10**400 // 10**399]) is None  # ints, floats, None: no error
    with pytest.raises(TypeError, match="non-numeric reward True for completion 1"):
        validate_rewards([1.0, True])  # the Task's rule too (tokrl.tasks.base): a bool is a bug, not 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_validate_names_the_function_and_completion(bad):
    with pytest.raises(ValueError) as info:
        validate_rewards([1.0, None, bad], reward_name="accuracy_reward")
    assert str(info.value) == f"reward function 'accuracy_reward' returned a non-finite reward {bad} for completion 2"
    with pytest.raises(ValueError, match="reward function 'reward'"):
        validate_rewards([bad])  # default name, the one process_group uses


def test_validate_refuses_non_numbers():
    with pytest.raises(TypeError, match="'fmt'.*completion 1"):
        validate_rewards([0.0, "1.0"], reward_name="fmt")
