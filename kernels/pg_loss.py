"""Triton: the clipped policy-gradient (+ k3 KL) epilogue on per-row log-probs, forward and backward.

Math, per row i of k (all vectors [k]; A = advantages, old/ref = behaviour and reference log-probs):

    r       = exp(logp - old)                                  (old None: old = logp.detach(), r = 1)
    pg      = -min(r * A, clamp(r, 1 - eps_low, 1 + eps_high) * A)
    clipped = (A > 0 and r > 1 + eps_high) or (A < 0 and r < 1 - eps_low)     (the clamp branch: no gradient)
    kl      = exp(ref - logp) - (ref - logp) - 1               (only when beta > 0)
    loss_i  = w_i * (pg + beta * kl)                           (weights None: w = 1)
    d loss_i / d logp_i = w_i * (-A * r * [not clipped] + beta * (1 - exp(ref - logp)))

The forward kernel (1-D grid over blocks of rows) writes loss [k] fp32, clipped [k] bool and the
derivative coefficient [k] fp32; backward is grad_out * coefficient. Memory: O(k), nothing else saved.
Gradients flow to logp only (old_logp, ref_logp, advantages and weights are data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tokrl_kernels._configs import INTERPRET

_BLOCK = 128 if INTERPRET else 1024


@dataclass(frozen=True)
class _Options:
    """Non-tensor options of one call."""

    eps_low: float
    eps_high: float
    beta: float


# k and the user's row vectors are never specialised (divisibility, alignment): a new k compiles nothing new.
@triton.jit(do_not_specialize=["k"], do_not_specialize_on_alignment=["k", "adv_ptr", "old_ptr", "ref_ptr", "w_ptr"])
def _pg_forward_kernel(
    logp_ptr,
    adv_ptr,
    old_ptr,
    ref_ptr,
    w_ptr,
    loss_ptr,
    clipped_ptr,
    coef_ptr,
    k,
    ratio_lo,
    ratio_hi,
    beta,
    HAS_OLD: tl.constexpr,
    HAS_KL: tl.constexpr,
    HAS_W: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = rows < k
    logp = tl.load(logp_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    if HAS_OLD:
        ratio = tl.exp(logp - tl.load(old_ptr + rows, mask=mask, other=0.0).to(tl.float32))
    else:
        ratio = tl.full((BLOCK,), 1.0, dtype=tl.float32)
    clipped = ((adv > 0) & (ratio > ratio_hi)) | ((adv < 0) & (ratio < ratio_lo))
    # NaN-propagating min/max: a NaN log-prob gives a NaN loss, as torch's min/clamp do (the default drops NaN).
    clamped = tl.maximum(ratio, ratio_lo, propagate_nan=tl.PropagateNan.ALL)
    clamped = tl.minimum(clamped, ratio_hi, propagate_nan=tl.PropagateNan.ALL)
    loss = -tl.minimum(ratio * adv, clamped * adv, propagate_nan=tl.PropagateNan.ALL)
    coef = tl.where(clipped, 0.0, -adv * ratio)
    if HAS_KL:
        delta = tl.load(ref_ptr + rows, mask=mask, other=0.0).to(tl.float32) - logp
        exp_delta = tl.exp(delta)
        loss += beta * (exp_delta - delta - 1.0)
        coef += beta * (1.0 - exp_delta)
    if HAS_W:
        w = tl.load(w_ptr + rows, mask=mask, other=0.0).to(tl.float32)
        loss *= w
        coef *= w
    tl.store(loss_ptr + rows, loss, mask=mask)
    tl.store(clipped_ptr + rows, clipped.to(tl.int8), mask=mask)
    tl.store(coef_ptr + rows, coef, mask=mask)


@triton.jit(do_not_specialize=["k"], do_not_specialize_on_alignment=["k"])
def _pg_backward_kernel(grad_ptr, coef_ptr, out_ptr, k, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = rows < k
    g = tl.load(grad_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, g * tl.load(coef_ptr + rows, mask=mask, other=0.0), mask=mask)


def _as_row_vector(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A contiguous [k] tensor for a kernel pointer; None becomes `like` (a placeholder the kernel never reads)."""
    return like if t is None else t.detach().contiguous()


class _PGEpilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, advantages, old_logp, ref_logp, weights, opts: _Options):
        k = logp.numel()
        logp_c = logp.detach().float().contiguous()  # [k]
        loss = torch.empty(k, dtype=torch.float32, device=logp.device)  # [k]
        clipped = torch.empty(k, dtype=torch.int8, device=logp.device)  # [k] 0/1, viewed as bool below
        coef = torch.empty(k, dtype=torch.float32, device=logp.device)  # [k] d loss_i / d logp_i
        has_kl = opts.beta > 0.0
        if k > 0:
            _pg_forward_kernel[(triton.cdiv(k, _BLOCK),)](
                logp_c,
                _as_row_vector(advantages, logp_c),
                _as_row_vector(old_logp, logp_c),
                _as_row_vector(ref_logp if has_kl else None, logp_c),
                _as_row_vector(weights, logp_c),
                # Bounds formed in float64 on the host, rounded once to fp32: the same numbers torch compares with.
                loss,
                clipped,
                coef,
                k,
                1.0 - opts.eps_low,
                1.0 + opts.eps_high,
                opts.beta,
                HAS_OLD=old_logp is not None,
                HAS_KL=has_kl,
                HAS_W=weights is not None,
                BLOCK=_BLOCK,
            )
        ctx.save_for_backward(coef)
        clipped = clipped.view(torch.bool)  # [k]
        ctx.mark_non_differentiable(clipped)
        return loss, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_clipped):
        (coef,) = ctx.saved_tensors
        k = coef.numel()
        grad_logp = torch.empty_like(coef)  # [k] fp32
        if k > 0:
            grad_loss = grad_loss.float().contiguous()  # [k]; sum() hands in a stride-0 expand
            _pg_backward_kernel[(triton.cdiv(k, _BLOCK),)](grad_loss, coef, grad_logp, k, BLOCK=_BLOCK)
        return grad_logp, None, None, None, None, None


def pg_epilogue(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    weights: torch.Tensor | None,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss [k] fp32 and clipped [k] bool; differentiable w.r.t. logp (inputs already validated)."""
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp: required when beta > 0 (the KL term needs the reference log-probs), got None")
    opts = _Options(float(eps_low), float(eps_high), float(beta))
    return _PGEpilogue.apply(logp, advantages, old_logp, ref_logp, weights, opts)
