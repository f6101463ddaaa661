"""Group-relative advantages and reward validation, shared by every algorithm.

For a group of G valid rewards R_1..R_G:

    A_i = (R_i - mean(R)) / (std(R) + 1e-4)     (scale=True, GRPO)
    A_i =  R_i - mean(R)                        (scale=False, Dr. GRPO)

std is the *sample* (unbiased, Bessel-corrected) standard deviation, sqrt(sum_i (R_i - mean)^2 / (G - 1)),
the same as `torch.std`'s default and TRL's GRPO trainer, so advantages match TRL's for the same rewards.
A group whose rewards are all equal (including G = 1, where the sample std is undefined) gets exact zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tokrl.infra.validation import NOT_A_NUMBER, reward_problem

STD_EPS = 1e-4  # added to std before dividing: keeps near-constant groups from blowing up advantages


def validate_rewards(rewards: Sequence[float | None], reward_name: str = "reward") -> None:
    """Raise if a reward breaks `reward_problem`'s rule: TypeError for a non-number, ValueError for NaN or inf,
    naming `reward_name` and the completion (None is allowed: left out of its group's baseline and loss)."""
    for i, r in enumerate(rewards):
        problem = reward_problem(r)
        if problem is None:
            continue
        if problem == NOT_A_NUMBER:
            raise TypeError(f"reward function {reward_name!r} returned a non-numeric reward {r!r} for completion {i}")
        raise ValueError(f"reward function {reward_name!r} returned a non-finite reward {r} for completion {i}")


def all_equal(rewards: Sequence[float]) -> bool:
    """True when the rewards carry no group-relative signal: fewer than two distinct values."""
    return len(set(rewards)) <= 1


def group_advantages(rewards: torch.Tensor | Sequence[float], scale: bool = True) -> torch.Tensor:
    """Group-relative advantages of G finite rewards.

    rewards: [G] (tensor or sequence of floats; None must already be filtered out)
    returns: [G] fp32, A_i = (R_i - mean(R)) / (std(R) + 1e-4) with the sample (unbiased) std when `scale`,
             else R_i - mean(R). All-equal rewards (and G <= 1) give exact zeros.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()  # [G] fp64: exact mean for 0/1 rewards
    if isinstance(rewards, torch.Tensor):
        finite, equal = bool(torch.isfinite(r).all()), r.numel() == 0 or bool((r == r[0]).all())
    else:  # the trainer's case: Python floats, checked in Python (no tensor ops or reads per group)
        values = [float(x) for x in rewards]
        finite, equal = all(math.isfinite(x) for x in values), all_equal(values)
    if not finite:
        raise ValueError(f"group_advantages: rewards must be finite, got {r.tolist()}")
    if equal:
        # No signal; also avoids the NaN sample std of a single reward and rounding residue of the mean.
        return torch.zeros(r.numel(), dtype=torch.float32)  # [G]
    centred = r - r.mean()  # [G]
    if scale:
        centred = centred / (r.std(unbiased=True) + STD_EPS)  # [G]
    return centred.to(torch.float32)  # [G]
