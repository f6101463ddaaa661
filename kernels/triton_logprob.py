"""Triton: log-probs (and optionally entropies) of target tokens at selected rows, from hidden states and the head.

Named triton_logprob, not linear_logprob: a submodule of that name would replace the public function
`tokrl_kernels.linear_logprob` as a package attribute the first time it is imported.

Math, per selected row i (k rows; `index[i]` picks a row of hidden [N, D]; weight is [V, D]):

    y      = hidden[index[i]] @ weight.T              [V] fp32 (bf16/fp16 operands, fp32 accumulation)
    z      = map(y): s * y, softcap c * tanh(z / c), / T   (`tokrl_kernels._logits`; slope dz/dy)
    lse_i  = logsumexp(z)                              fp32
    logp_i = z[targets[i]] - lse_i                     fp32, <= 0
    H_i    = -sum_v p_v log p_v,  p = softmax(z)       fp32, >= 0 (only with return_entropy)
    dz     = (g_i * (onehot(targets[i]) - p) - g_H_i * p * (log p + H_i)) * dz/dy    (g = d loss / d logp_i,
                                                                                      g_H = d loss / d H_i)
    dH[index[i]] += dz @ weight     dW += dz^T @ hidden[index[i]]    (repeated indices add up)

Forward: `_lse_forward` (one sweep over the vocabulary: lse, logp, entropy). Backward, two variants:
- "gemm" (default, `_backward_gemm`): dz for one vocabulary chunk at a time in a bounded workspace, then
  cuBLAS GEMMs with fp32 accumulation; no atomics.
- "atomic" (`_backward_atomic`): one fused kernel adding per-tile products into dH/dW with fp32 atomics, kept as a
  benchmark provider (`tokrl_atomic`) and imported only when chosen: it is not on the default's import path.
`backward_variant("atomic")` switches for a block of code (benchmarks compare both).

Memory: saved for backward = lse [k] (and H [k]) fp32 plus the inputs themselves. Nothing of size [k, V].
Autocast does not apply: the kernels see the tensors' own dtypes (contract in `_triton_tiles`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tokrl_kernels._logits import LogitMap
from tokrl_kernels._lse_forward import lse_forward

# variant -> the module whose `backward_<variant>` runs it
_BACKWARDS = {"gemm": "tokrl_kernels._backward_gemm", "atomic": "tokrl_kernels._backward_atomic"}
_ACTIVE = {"backward": "gemm"}


@contextlib.contextmanager
def backward_variant(name: str) -> Iterator[None]:
    """Run backward passes started inside the block with the `name` variant ("gemm" or "atomic")."""
    if name not in _BACKWARDS:
        raise ValueError(f"backward variant: expected one of {', '.join(map(repr, _BACKWARDS))}, got {name!r}")
    previous = _ACTIVE["backward"]
    _ACTIVE["backward"] = name
    try:
        yield
    finally:
        _ACTIVE["backward"] = previous


@functools.cache
def _backward(name: str) -> Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]]:
    """The backward function of variant `name`, its module imported on first use (and looked up once)."""
    return getattr(importlib.import_module(_BACKWARDS[name]), f"backward_{name}")


@dataclass(frozen=True)
class _Options:
    """Non-tensor options of one call."""

    logit_map: LogitMap
    with_entropy: bool
    backward: str  # read when the call is made, so a variant chosen for a forward also runs its backward


class _LinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, index, opts: _Options):
        with torch.autocast(hidden.device.type, enabled=False):  # no torch op here may change dtype under autocast
            logp, lse, entropy = lse_forward(hidden, weight, targets, index, opts.logit_map, opts.with_entropy)
        ctx.save_for_backward(hidden, weight, targets, index, lse, entropy)
        ctx.opts = opts
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: skip its term
        return (logp, entropy) if opts.with_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, targets, index, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w) or (grad_logp is None and grad_entropy is None):
            return None, None, None, None, None
        # [k] fp32 contiguous; sum() hands in a stride-0 expand; a missing gradient is zero.
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float().contiguous()
        grad_entropy = None if grad_entropy is None else grad_entropy.float().contiguous()
        with torch.autocast(hidden.device.type, enabled=False):  # the GEMM backward's addmm would become bf16
            grad_h, grad_w = _backward(ctx.opts.backward)(
                hidden,
                weight,
                targets,
                index,
                lse,
                entropy,
                grad_logp,
                grad_entropy,
                need_h,
                need_w,
                ctx.opts.logit_map,
            )
        grad_hidden = grad_h.to(hidden.dtype) if need_h else None  # [N, D]
        grad_weight = grad_w.to(weight.dtype) if need_w else None  # [V, D]
        return grad_hidden, grad_weight, None, None, None


class _EmptyLogprob(torch.autograd.Function):
    """k = 0: empty [0] fp32 results whose backward gives zero gradients of the right shapes."""

    @staticmethod
    def forward(ctx, hidden, weight, with_entropy: bool):
        ctx.shapes = (hidden.shape, hidden.dtype, weight.shape, weight.dtype)
        empty = torch.empty(0, dtype=torch.float32, device=hidden.device)  # [0]
        return (empty, empty.clone()) if with_entropy else empty

    @staticmethod
    def backward(ctx, *grads):
        h_shape, h_dtype, w_shape, w_dtype = ctx.shapes
        device = grads[0].device
        gh = torch.zeros(h_shape, dtype=h_dtype, device=device) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(w_shape, dtype=w_dtype, device=device) if ctx.needs_input_grad[1] else None
        return gh, gw, None


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None,
    logit_map: LogitMap,
    *,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(map(hidden[index] @ weight.T))[targets] as fp32 [k] (inputs already validated).

    With return_entropy, (logp [k], entropy [k]). Differentiable w.r.t. hidden, and weight when it requires grad.
    """
    if index is None:
        index = torch.arange(hidden.shape[0], device=hidden.device)  # [N]
    # Row stride is free (views of [B, L, D] work); the feature axis must be unit-stride for the tile loads.
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()  # [N, D]
    if weight.stride(1) != 1:
        weight = weight.contiguous()  # [V, D]
    index, targets = index.contiguous(), targets.contiguous()  # [k], [k]
    if index.numel() == 0:
        # No launch on an empty grid; the zero gradients still come from backward.
        return _EmptyLogprob.apply(hidden, weight, return_entropy)
    opts = _Options(logit_map, bool(return_entropy), _ACTIVE["backward"])
    return _LinearLogprob.apply(hidden, weight, targets, index, opts)
