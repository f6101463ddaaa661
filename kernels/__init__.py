"""tokrl_kernels: log-probs and the clipped policy-gradient loss at selected rows, straight from hidden states.

    from tokrl_kernels import linear_logprob, linear_pg_loss, PGLoss

    logp = linear_logprob(hidden, weight, targets, index=None, *, temperature=1.0, softcap=None,
                          logit_scale=1.0, impl="auto")
    logp, entropy = linear_logprob(..., return_entropy=True)
    out = linear_pg_loss(hidden, weight, targets, advantages, index=None, *, old_logp=None, ref_logp=None,
                         weights=None, eps_low=0.2, eps_high=0.2, beta=0.0, temperature=1.0,
                         softcap=None, logit_scale=1.0, reduction="sum", impl="auto")
                                                         # -> PGLoss(loss, logp, clipped)

The logits are z = logit_scale * (hidden @ weight.T), then softcap * tanh(z / softcap) when softcap is set, then
z / temperature: Gemma-2's final_logit_softcapping is softcap, Cohere's logit_scale is logit_scale, Granite's
logits_scaling L is logit_scale = 1 / L (see `tokrl_kernels._logits`).

Shapes: hidden [N, D] and weight [V, D] (the LM head) in fp32/bf16/fp16; index [k] int64 rows of
hidden (repeats allowed; None = all rows); targets, advantages, old_logp, ref_logp, weights [k]. The
[k, V] logits are never materialised: memory does not grow with the vocabulary. The math is in
`tokrl_kernels.reference`, the PyTorch twin every implementation is tested against.

Dtype contract (both implementations, the same under `torch.autocast` as outside it: autocast is not applied
inside the ops): log-probs, entropies and the loss are fp32; the logits are accumulated in fp32 from operands
in the inputs' dtype (bf16/fp16 on tensor cores, fp32 as IEEE fp32, never TF32); when hidden and weight differ
in dtype (e.g. bf16 hidden states and an fp32 head), both are upcast and multiplied in fp32. Gradients come
back in each input's own dtype.

Checks: every argument is validated with a one-line error naming it. On CUDA the index and target ranges are
checked without a host sync (a bad value raises a device-side assert, as torch's own indexing does); set
TOKRL_KERNEL_DEBUG=1 to check them on the host instead, with an IndexError that names the value.

This package depends on torch only (triton is imported lazily); it never imports tokrl, transformers or peft.
"""

from __future__ import annotations

import torch

from tokrl_kernels._dispatch import IMPLS, get_backend, resolve_impl
from tokrl_kernels._pg_compose import PGLoss, compose_pg_loss
from tokrl_kernels._validation import validate_logprob_inputs

__all__ = ["IMPLS", "PGLoss", "linear_logprob", "linear_pg_loss", "resolve_impl"]
__version__ = "0.1.0"


def _device_of(hidden: object) -> torch.device:
    """hidden's device; CPU for a non-tensor, so validation (not an AttributeError) reports the bad argument."""
    return hidden.device if isinstance(hidden, torch.Tensor) else torch.device("cpu")


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    return_entropy: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(z)[targets] with z = map(hidden[index] @ weight.T): fp32 [k], each <= 0.

    map: z = logit_scale * y, then softcap * tanh(z / softcap) (softcap not None), then z / temperature.
    return_entropy=True returns (logp [k], entropy [k]): entropy_i = -sum_v p_v log p_v of p = softmax(z_i),
    over the full vocabulary, computed in the same sweep.
    Both are differentiable w.r.t. hidden, and w.r.t. weight when it requires grad.
    """
    backend = get_backend(impl, _device_of(hidden))
    index, logit_map = validate_logprob_inputs(hidden, weight, targets, index, temperature, softcap, logit_scale)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy: expected a bool, got {type(return_entropy).__name__}")
    return backend.logprob(hidden, weight, targets, index, logit_map, return_entropy=return_entropy)


def linear_pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    reduction: str = "sum",
    impl: str = "auto",
) -> PGLoss:
    """Clipped policy-gradient (+ beta * k3 KL) loss at the selected rows; see `tokrl_kernels.reference`.

    Per row: loss_i = weights_i * (-min(r*A, clamp(r, 1-eps_low, 1+eps_high)*A) + beta*kl_i), r = exp(logp - old).
    reduction: "sum", "mean" (over k; 0 when k = 0) or "none" ([k]). softcap / logit_scale: as `linear_logprob`.
    Gradients flow to hidden (and weight when it requires grad) only: advantages, old_logp, ref_logp and weights
    are data, and get no gradient (None) from either implementation.
    """
    backend = get_backend(impl, _device_of(hidden))
    return compose_pg_loss(
        backend.logprob,
        backend.epilogue,
        hidden,
        weight,
        targets,
        advantages,
        index,
        old_logp=old_logp,
        ref_logp=ref_logp,
        weights=weights,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        temperature=temperature,
        softcap=softcap,
        logit_scale=logit_scale,
        reduction=reduction,
    )
