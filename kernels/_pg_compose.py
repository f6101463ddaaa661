"""`linear_pg_loss` assembled from two ops: log-probs at selected rows, then the per-row PG epilogue.

Both implementations (Triton and the PyTorch twin) plug their two ops in here, so validation, the
reduction and the output contract exist once. Gradients flow loss -> epilogue (d loss/d logp, O(k)) ->
log-prob op (recomputed logits tiles) -> hidden and weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from tokrl_kernels._validation import validate_logprob_inputs, validate_pg_inputs

# (hidden, weight, targets, index, logit_map, return_entropy=False) -> logp [k] or (logp [k], entropy [k])
LogprobFn = Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
EpilogueFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class PGLoss(NamedTuple):
    """loss: scalar (sum/mean) or [k] (none), fp32; logp: [k] fp32, detached; clipped: [k] bool."""

    loss: torch.Tensor
    logp: torch.Tensor
    clipped: torch.Tensor


def compose_pg_loss(
    logprob_fn: LogprobFn,
    epilogue_fn: EpilogueFn,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    index: torch.Tensor | None,
    *,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    weights: torch.Tensor | None,
    eps_low: float,
    eps_high: float,
    beta: float,
    temperature: float,
    softcap: float | None,
    logit_scale: float,
    reduction: str,
) -> PGLoss:
    index, logit_map = validate_logprob_inputs(hidden, weight, targets, index, temperature, softcap, logit_scale)
    k = index.numel()
    validate_pg_inputs(
        advantages,
        old_logp,
        ref_logp,
        weights,
        k=k,
        device=hidden.device,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        reduction=reduction,
    )
    logp = logprob_fn(hidden, weight, targets, index, logit_map)  # [k] fp32
    loss_rows, clipped = epilogue_fn(
        logp,
        advantages,
        old_logp,
        ref_logp if beta > 0 else None,
        weights,
        eps_low=float(eps_low),
        eps_high=float(eps_high),
        beta=float(beta),
    )  # [k] fp32, [k] bool
    if reduction == "sum":
        loss = loss_rows.sum()
    elif reduction == "mean":
        loss = loss_rows.sum() / max(k, 1)  # k = 0 gives 0, not NaN
    else:
        loss = loss_rows
    return PGLoss(loss, logp.detach(), clipped)
