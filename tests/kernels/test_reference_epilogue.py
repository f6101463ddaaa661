"""The PG epilogue pinned by hand-computed values (the float64 oracle reuses it, so it must be right on its own)."""

from __future__ import annotations

import math

import pytest
import torch

from tokrl_kernels.reference import pg_epilogue


def _run(logp, adv, old=None, ref=None, w=None, eps_low=0.2, eps_high=0.2, beta=0.0):
    logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float64)
    loss, clipped = pg_epilogue(logp, t(adv), t(old), t(ref), t(w), eps_low=eps_low, eps_high=eps_high, beta=beta)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return loss.detach(), clipped, grad


def test_on_policy_is_reinforce():
    # r = 1: loss = -A, d loss / d logp = -A * r = -A; nothing clipped.
    loss, clipped, grad = _run([-0.5, -2.0], [1.5, -0.7])
    assert loss.tolist() == pytest.approx([-1.5, 0.7])
    assert grad.tolist() == pytest.approx([-1.5, 0.7])
    assert clipped.tolist() == [False, False]


def test_clipping_both_sides():
    # Row 0: r = e^0.5 = 1.6487 > 1.2 with A = 2 > 0 -> clipped: loss = -1.2 * 2 = -2.4, grad 0.
    # Row 1: r = e^-0.5 = 0.6065 < 0.8 with A = -1 < 0 -> clipped: loss = -(0.8 * -1) = 0.8, grad 0.
    # Row 2: r = e^0.5 with A = -1 -> min(-1.6487, -1.2) = -1.6487 -> loss 1.6487, grad = -A r = 1.6487.
    # Row 3: r = e^-0.5 with A = 2 -> min(1.2131, 1.6) = 1.2131 -> loss -1.2131, grad = -2 r = -1.2131.
    loss, clipped, grad = _run([0.0, 0.0, 0.0, 0.0], [2.0, -1.0, -1.0, 2.0], old=[-0.5, 0.5, -0.5, 0.5])
    r_up, r_down = math.exp(0.5), math.exp(-0.5)
    assert loss.tolist() == pytest.approx([-2.4, 0.8, r_up, -2 * r_down])
    assert clipped.tolist() == [True, True, False, False]
    assert grad.tolist() == pytest.approx([0.0, 0.0, r_up, -2 * r_down])


def test_asymmetric_eps():
    # r = e^0.25 = 1.284: clipped with eps_high = 0.2, not with eps_high = 0.3.
    _, clipped, _ = _run([0.0], [1.0], old=[-0.25], eps_high=0.2)
    assert clipped.tolist() == [True]
    _, clipped, _ = _run([0.0], [1.0], old=[-0.25], eps_high=0.3)
    assert clipped.tolist() == [False]


def test_kl_and_weights():
    # logp = -1, ref = -1.5: d = -0.5, kl = e^-0.5 + 0.5 - 1 = 0.10653; loss = w * (-A + beta * kl).
    # d kl / d logp = 1 - e^d = 1 - 0.60653 = 0.39347; grad = w * (-A + beta * 0.39347).
    beta, w, adv = 0.5, 0.25, 0.8
    loss, _, grad = _run([-1.0], [adv], ref=[-1.5], w=[w], beta=beta)
    kl = math.exp(-0.5) + 0.5 - 1
    assert loss.item() == pytest.approx(w * (-adv + beta * kl))
    assert grad.item() == pytest.approx(w * (-adv + beta * (1 - math.exp(-0.5))))


def test_beta_zero_ignores_ref():
    loss_a, _, _ = _run([-1.0], [1.0], ref=[-3.0], beta=0.0)
    loss_b, _, _ = _run([-1.0], [1.0])
    assert loss_a.item() == loss_b.item() == -1.0
