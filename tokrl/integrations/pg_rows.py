"""TRL's per-token GRPO loss on the scored rows as one `linear_pg_loss` call, the bias-corrected KL included.

TRL's per-token loss, for a row with log-prob l (with gradient), old log-prob o, reference log-prob f, advantage A
and weight w (the loss type's normaliser), is

    w * ( -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A) + beta * c * kl ),   r = exp(l - o),
    kl = exp(f - l) - (f - l) - 1,   c = r with use_bias_correction_kl (TRL's default), else c = 1

(on-policy TRL passes no old log-probs: o = l.detach(), r == 1 in value). `linear_pg_loss` computes
w * (pg + beta * kl) with c = 1. With c = r the value and the gradient differ only in the KL term:

    d(r * kl)/dl = r * kl + r * (1 - exp(f - l)) = r * (l - f) =: q        (the kl terms cancel)

while the kernel's KL term has d kl(f', l)/dl = 1 - exp(f' - l). So the kernel is called with, per row,

    m  = max(1, 2 q)                  (so q / m <= 1/2 and the log below is finite and well conditioned)
    f' = l + log(1 - q / m)           the kernel's KL gradient is then q / m at l
    w' = w * m,  A' = A / m           w' * pg(A') = w * pg(A): pg is positively homogeneous in A, clipping unchanged

(l: this call's log-probs, measured without gradient first). Its gradient is TRL's exactly; its value differs by
a constant, sum w' beta kl(f', l) - sum w beta r kl(f, l), which is subtracted (detached). On- and off-policy
alike, so reused generations (num_iterations > 1, steps_per_generation > gradient accumulation) keep the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokrl.integrations.entropy import logprob_and_entropy
from tokrl.models.head import LogitTransform
from tokrl_kernels import linear_pg_loss


@dataclass(frozen=True)
class PGLossRequest:
    """What `linear_pg_loss` needs beyond the hidden states, one value per scored row (k rows, row-major order
    of the label mask)."""

    advantages: torch.Tensor  # [k]
    old_logp: torch.Tensor | None  # [k]; None on-policy
    ref_logp: torch.Tensor | None  # [k]
    weights: torch.Tensor  # [k]
    eps_low: float
    eps_high: float
    beta: float
    ratio_weighted_kl: bool  # TRL's use_bias_correction_kl


@dataclass
class PGLossOutput:
    """`loss`: scalar with gradient; per-row detached logp, entropy [k] and clipped [k] bool for the metrics;
    `aux_loss`: the MoE router load-balancing loss (with gradient) when router logits were asked for."""

    loss: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    clipped: torch.Tensor
    aux_loss: torch.Tensor | None = None


def _kl(ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    delta = ref - logp  # [k]
    return torch.exp(delta) - delta - 1.0


def ratio_weighted_kl_inputs(
    request: PGLossRequest, logp_now: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages A', weights w', reference f', constant) for the kernel call (module docstring); all [k] but the
    constant, a scalar to subtract from the kernel's loss. logp_now [k]: the rows' log-probs, no gradient."""
    ratio = torch.ones_like(logp_now) if request.old_logp is None else torch.exp(logp_now - request.old_logp)  # [k]
    slope = ratio * (logp_now - request.ref_logp)  # [k] d(r * kl)/dl
    scale = torch.clamp(2.0 * slope, min=1.0)  # [k]
    ref = logp_now + torch.log1p(-slope / scale)  # [k]
    weights = request.weights * scale  # [k]
    kernel_kl = (weights * _kl(ref, logp_now)).sum()  # the KL value the kernel will add
    trl_kl = (request.weights * ratio * _kl(request.ref_logp, logp_now)).sum()  # the KL value TRL adds
    constant = request.beta * (kernel_kl - trl_kl)
    return request.advantages / scale, weights, ref, constant


def pg_loss_rows(
    flat: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    request: PGLossRequest,
    *,
    temperature: float,
    impl: str,
    head: LogitTransform,
) -> PGLossOutput:
    """TRL's summed GRPO loss on rows `flat[index]` ([N, D] -> k rows) under head `weight` [V, D]."""
    ratio_weighted_kl = request.ratio_weighted_kl and request.beta > 0
    with torch.no_grad():  # entropy for TRL's metrics; current log-probs for the ratio-weighted KL
        logp_now, entropy = logprob_and_entropy(
            flat, weight, targets, index, temperature=temperature, impl=impl, with_entropy=True, head=head
        )  # [k], [k]
    advantages, weights, ref, constant = request.advantages, request.weights, request.ref_logp, None
    if ratio_weighted_kl:
        advantages, weights, ref, constant = ratio_weighted_kl_inputs(request, logp_now)
    out = linear_pg_loss(
        flat,
        weight,
        targets,
        advantages,
        index,
        old_logp=request.old_logp,
        ref_logp=ref,
        weights=weights,
        eps_low=request.eps_low,
        eps_high=request.eps_high,
        beta=request.beta,
        temperature=temperature,
        reduction="sum",
        impl=impl,
        **head.kernel_kwargs(),
    )
    loss = out.loss if constant is None else out.loss - constant
    return PGLossOutput(loss=loss, logp=out.logp, entropy=entropy.detach(), clipped=out.clipped)
