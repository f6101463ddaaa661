"""NaN and inf in the inputs propagate through both implementations as through torch's full-logits computation.

A row whose hidden state is NaN, or whose logits meet an inf weight entry (+inf logit: NaN log-softmax;
-inf logit at the target: logp -inf), must come out non-finite, never as a plausible 0.0. Each case compares
logp, the per-row loss and the finiteness pattern of dH with the naive fp32 full-logits computation.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils import naive_pg_loss
from tokrl_kernels import linear_pg_loss

IMPLS = ["torch", "triton"]
N_ROWS, DIM, VOCAB = 6, 40, 1003


def _poison_hidden_row(hidden, weight, targets):
    hidden[1] = float("nan")  # row 1 NaN, the others finite


def _inf_weight_entry(hidden, weight, targets):
    # weight[5, 3] = inf: logit 5 is +inf where hidden[:, 3] > 0 (NaN row), -inf where < 0 (finite unless target 5).
    weight[5, 3] = float("inf")
    hidden[:, 3] = torch.tensor([1.0, -1.0, -0.5, -2.0, 0.7, -1.0])
    targets[1] = 5  # a -inf target logit: logp -inf


def _inf_weight_row(hidden, weight, targets):
    weight[7] = float("inf")  # inf * mixed signs: a NaN logit in every row


def _nan_weight_entry(hidden, weight, targets):
    weight[2, 0] = float("nan")  # every row's logit 2 is NaN


# (id, poison, why)
CASES = [
    ("nan-hidden-row", _poison_hidden_row, "one NaN row must be NaN, the others unaffected"),
    ("inf-weight-entry", _inf_weight_entry, "+inf and -inf logits, and a -inf target logit"),
    ("inf-weight-row", _inf_weight_row, "a NaN logit in every row"),
    ("nan-weight-entry", _nan_weight_entry, "a NaN weight reaches every row"),
]


def _inputs(poison):
    hidden = torch.randn(N_ROWS, DIM)  # [N, D]
    weight = torch.randn(VOCAB, DIM) / math.sqrt(DIM)  # [V, D]
    targets = torch.randint(0, VOCAB, (N_ROWS,))  # [N]
    targets[targets == 5] = 6  # only the case that wants target 5 sets it
    poison(hidden, weight, targets)
    advantages = torch.randn(N_ROWS)  # [N]
    old_logp = -torch.rand(N_ROWS) * 5  # [N]
    return hidden, weight, targets, advantages, old_logp


def _run(fn, hidden, weight, targets, advantages, old_logp):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = fn(h, w, targets, advantages, None, old_logp=old_logp, reduction="none")
    out[0].backward(torch.ones(N_ROWS))
    return out[0].detach(), out[1].detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("poison", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_nonfinite_inputs_propagate_like_torch(poison, impl: str):
    x = _inputs(poison)
    loss, logp, grad_h, grad_w = _run(lambda *a, **kw: linear_pg_loss(*a, **kw, impl=impl), *x)
    ref_loss, ref_logp, ref_grad_h, ref_grad_w = _run(naive_pg_loss, *x)
    assert not torch.isfinite(ref_logp).all(), "control: the poisoned input must make some torch log-prob non-finite"
    # equal_nan plus exact inf matching: NaN where torch has NaN, -inf where torch has -inf, close elsewhere.
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5, equal_nan=True)
    summed = linear_pg_loss(*x[:4], None, old_logp=x[4], impl=impl).loss
    assert not torch.isfinite(summed), "a non-finite row must make the summed loss non-finite"
    # Gradients: the same non-finite rows of dH; finite entries agree.
    assert torch.equal(torch.isfinite(grad_h), torch.isfinite(ref_grad_h)), "dH non-finite pattern differs"
    both = torch.isfinite(grad_h)
    torch.testing.assert_close(grad_h[both], ref_grad_h[both], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(grad_w).all() == torch.isfinite(ref_grad_w).all()
