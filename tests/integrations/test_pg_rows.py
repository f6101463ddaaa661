"""`pg_loss_rows` is TRL's per-token GRPO loss, value and gradients, the bias-corrected KL included (fp32 vs float64).

The reference writes TRL's formula out on full float64 logits with autograd: l = log_softmax(map(h W^T) / T)[y],
r = exp(l - old) (old = l.detach() on-policy), kl = exp(f - l) - (f - l) - 1, loss = sum w (pg(r, A) + beta c kl),
c = r with the bias correction. Rows are drawn so that the kernel-input rewrite meets every regime: reference
log-probs far below and above the current ones (slope q = r (l - f) well above 1/2, so the per-row scale m > 1, and
negative), advantages of both signs, ratios clipped on both sides.
"""

from __future__ import annotations

import pytest
import torch

from tokrl.integrations.pg_rows import PGLossRequest, pg_loss_rows, ratio_weighted_kl_inputs
from tokrl.models.head import PLAIN_HEAD, LogitTransform

EPS_LOW, EPS_HIGH = 0.2, 0.28


def _reference(hidden, weight, targets, index, request, temperature, head, bias_corrected):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    z = head.apply(h[index] @ w.T) / temperature  # [k, V] float64
    logp = z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # [k]
    old = logp.detach() if request.old_logp is None else request.old_logp.double()
    ratio = torch.exp(logp - old)
    adv = request.advantages.double()
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv)
    delta = request.ref_logp.double() - logp
    kl = torch.exp(delta) - delta - 1
    kl = kl * ratio if bias_corrected else kl
    loss = (request.weights.double() * (pg + request.beta * kl)).sum()
    loss.backward()
    return loss.detach(), h.grad, w.grad, logp.detach(), ratio.detach()


def _inputs(k, n=12, vocab=300, dim=16):
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) * 0.5).requires_grad_()
    index = torch.randint(0, n, (k,))
    targets = torch.randint(0, vocab, (k,))
    return hidden, weight, index, targets


@pytest.mark.parametrize("off_policy", [False, True], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("bias_corrected", [True, False], ids=["bias-corrected-kl", "plain-kl"])
@pytest.mark.parametrize(
    "head", [PLAIN_HEAD, LogitTransform(logit_scale=0.5, softcap=3.0)], ids=["plain-head", "scaled-softcapped-head"]
)
def test_pg_loss_rows_is_trl_loss(off_policy, bias_corrected, head):
    k, temperature, beta = 40, 0.8, 0.3
    hidden, weight, index, targets = _inputs(k)
    with torch.no_grad():
        z = head.apply(hidden[index] @ weight.T) / temperature
        logp = z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # [k] the current log-probs
    spread = torch.linspace(-3.0, 3.0, k)[torch.randperm(k)]  # f - l from -3 to 3: q from about 3 down to -3
    request = PGLossRequest(
        advantages=torch.randn(k) * 2,
        old_logp=logp + 0.5 * torch.randn(k) if off_policy else None,
        ref_logp=logp + spread,
        weights=torch.rand(k) + 0.1,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        beta=beta,
        ratio_weighted_kl=bias_corrected,
    )
    out = pg_loss_rows(hidden, weight, targets, index, request, temperature=temperature, impl="torch", head=head)
    out.loss.backward()
    want_loss, want_dh, want_dw, want_logp, ratio = _reference(
        hidden, weight, targets, index, request, temperature, head, bias_corrected
    )
    torch.testing.assert_close(out.loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logp.double(), want_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), want_dh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), want_dw, rtol=1e-5, atol=1e-5)
    if bias_corrected:  # the rewrite met every regime
        slope = ratio.float() * (logp - request.ref_logp)
        assert (slope > 1.0).any() and (slope < 0).any()
    if off_policy:
        assert out.clipped.any() and not out.clipped.all()


def test_the_rewrite_keeps_signs_and_bounds():
    k = 64
    logp = -torch.rand(k) * 5
    request = PGLossRequest(
        advantages=torch.randn(k),
        old_logp=logp + torch.randn(k),
        ref_logp=logp + 4 * torch.randn(k),
        weights=torch.rand(k),
        eps_low=0.2,
        eps_high=0.2,
        beta=0.1,
        ratio_weighted_kl=True,
    )
    advantages, weights, ref, constant = ratio_weighted_kl_inputs(request, logp)
    scale = weights / request.weights  # [k] m >= 1
    assert (scale >= 1 - 1e-6).all() and (scale > 1.5).any()
    assert torch.equal(torch.sign(advantages), torch.sign(request.advantages))  # the clipping side is unchanged
    assert torch.isfinite(ref).all() and torch.isfinite(constant)
    slope = torch.exp(logp - request.old_logp) * (logp - request.ref_logp)
    # the kernel's KL gradient at l, 1 - exp(f' - l), times m: the bias-corrected KL's gradient q
    torch.testing.assert_close(scale * (1 - torch.exp(ref - logp)), slope, rtol=1e-5, atol=1e-6)
