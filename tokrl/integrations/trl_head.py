"""TRL's fused LM head served by `tokrl_kernels`: the model forward behind `model(..., fused_lm_head=True)`.

TRL (>= 1.16) never builds [B, L, V] logits in its RL trainers: `trl.trainer.utils.add_fused_lm_head` replaces
`model.forward`, and a call with `fused_lm_head=True` runs the backbone, then scores the positions whose
next-token label is not -100 with `ChunkedLogProbFunction`. `patch_fused_head` wraps that forward once more:

    hidden = backbone(...).last_hidden_state                      [B, L, D]
    index  = b * L + t  for every (b, t) with label[b, t + 1] != -100   [k]  (pre-shifted labels: label[b, t])
    logp   = linear_logprob(hidden.view(B * L, D), W, label[index], index, temperature=T)   [k] fp32
    log_probs = zeros(B, L - 1).masked_scatter(mask, logp)      (TRL's FusedCausalLMOutput contract)

Rows are picked by index, so no [k, D] copy of the hidden states is made, and no [k, V] logits exist.
A call without `fused_lm_head` (generation) goes to the forward underneath, unchanged.
Why a forward wrapper (the project otherwise avoids patching forwards): TRL's fused-head protocol *is* a patched
`model.forward`, and serving it there keeps every call going through the wrappers around the model (DDP's
gradient hooks, PEFT's adapter switching for the reference pass, accelerate's autocast); overriding the trainer's
`_get_per_token_logps_and_entropies` instead would have to reach past them to the backbone.

`pg_loss=PGLossRequest(...)` (used by `trl_loss`) makes the same forward return the policy-gradient loss of
`linear_pg_loss` on those rows instead, so the loss is computed inside the one model call that DDP/PEFT wrap.

Refused, with the reason (`check_head_servable`), rather than computed wrongly: a final logit soft-cap, a
logit scale != 1 (logit_scale, output_multiplier, lm_head_multiplier, logits_scaling), a bias on the LM head,
a PEFT adapter or trainable copy on the head or its tied embedding, an MoE model that returns router logits
(its load-balancing loss is not computed here).
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel
from trl.trainer.utils import FusedCausalLMOutput

from tokrl.integrations.entropy import KERNEL_HAS_ENTROPY, chunked_entropy, logprob_and_entropy
from tokrl_kernels import linear_pg_loss

# Config attributes that rescale the logits before the softmax, and the value meaning "no scaling".
_LOGIT_SCALES = {"logit_scale": 1.0, "output_multiplier": 1.0, "lm_head_multiplier": 1.0, "logits_scaling": 1.0}
PATCHED_ATTR = "_tokrl_fused_head"


class UnsupportedByTokrl(ValueError):
    """The model or the trainer's configuration cannot be served exactly by tokrl's kernels."""


def check_head_servable(model: PreTrainedModel, adapted: torch.nn.Module | None = None) -> None:
    """Raise UnsupportedByTokrl naming the first reason tokrl's head would compute something TRL does not.

    model: the transformers model whose forward gets patched; adapted: the PEFT model around it, if any.
    """
    from tokrl.models import check_lm_head_not_adapted

    text_config = model.config.get_text_config()
    name = type(model).__name__
    softcap = getattr(text_config, "final_logit_softcapping", None)
    if softcap is not None:
        raise UnsupportedByTokrl(
            f"{name}: final_logit_softcapping={softcap} (tanh soft-cap on the logits); tokrl's kernels compute "
            "plain log_softmax(h @ W.T / T). Train this model without use_tokrl_kernels."
        )
    for attribute, neutral in _LOGIT_SCALES.items():
        value = getattr(text_config, attribute, None)
        if value is not None and float(value) != neutral:
            raise UnsupportedByTokrl(
                f"{name}: config.{attribute}={value} scales the logits; tokrl's kernels support only an unscaled "
                "head (scale 1). Train this model without use_tokrl_kernels."
            )
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise UnsupportedByTokrl(f"{name}: no output embedding with a `weight` (get_output_embeddings())")
    if getattr(head, "bias", None) is not None:
        raise UnsupportedByTokrl(
            f"{name}: the LM head has a bias ({tuple(head.bias.shape)}); tokrl's kernels compute h @ W.T without one."
        )
    if getattr(text_config, "output_router_logits", False):
        raise UnsupportedByTokrl(
            f"{name}: a Mixture-of-Experts model returning router logits; the load-balancing loss TRL adds to the "
            "fused head's output is not computed by tokrl's head."
        )
    try:
        check_lm_head_not_adapted(adapted if adapted is not None else model)
    except ValueError as error:
        raise UnsupportedByTokrl(f"{name}: an adapted LM head cannot be served: {error}") from error


@dataclass(frozen=True)
class PGLossRequest:
    """What `linear_pg_loss` needs beyond the hidden states, one value per scored row (k rows, row-major order
    of the label mask). `kl_correction` is subtracted from the loss (a detached constant, see trl_loss)."""

    advantages: torch.Tensor  # [k]
    old_logp: torch.Tensor | None  # [k]
    ref_logp: torch.Tensor | None  # [k]
    weights: torch.Tensor  # [k]
    eps_low: float
    eps_high: float
    beta: float
    ratio_weighted_kl: bool  # TRL's use_bias_correction_kl, on-policy only (old_logp is None)


@dataclass
class PGLossOutput:
    """`loss`: scalar with gradient; per-row detached logp, entropy [k] and clipped [k] bool for the metrics."""

    loss: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    clipped: torch.Tensor


def _backbone_attr(model: PreTrainedModel) -> str:
    # Same rule as TRL's add_fused_lm_head: transformers < 5 exposes a VLM's language backbone as `model`.
    import transformers
    from packaging.version import Version

    text_config = model.config.get_text_config()
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        return "model"
    return "base_model"


def _rows(hidden: torch.Tensor, labels: torch.Tensor | None, shift_labels: torch.Tensor | None):
    """(flat hidden [B*L, D], index [k], targets [k], mask [B, L'] of scored positions)."""
    batch, length, dim = hidden.shape
    grid = labels[:, 1:] if shift_labels is None else shift_labels  # [B, L'] next-token labels
    grid = grid.to(hidden.device)
    mask = grid != -100  # [B, L']
    b, t = mask.nonzero(as_tuple=True)  # row-major, the order masked_scatter fills
    index = b * length + t  # [k] hidden row t predicts grid[:, t] (grid is already shifted)
    return hidden.reshape(batch * length, dim), index, grid[b, t], mask


def _pg_loss(flat, weight, targets, index, request: PGLossRequest, temperature: float, impl: str) -> PGLossOutput:
    ratio_weighted_kl = request.ratio_weighted_kl and request.beta > 0
    with torch.no_grad():  # entropy for TRL's metrics; current log-probs only for the ratio-weighted KL
        if ratio_weighted_kl or KERNEL_HAS_ENTROPY:
            logp_now, entropy = logprob_and_entropy(
                flat, weight, targets, index, temperature=temperature, impl=impl, with_entropy=True
            )  # [k], [k]
        else:
            entropy = chunked_entropy(flat, weight, index, temperature)  # [k]
    advantages, correction = request.advantages, None
    if ratio_weighted_kl:
        # On-policy r == 1 in value, so d(r * kl) = kl * dlogp + dkl: folding -beta * kl into the advantage
        # adds the kl * dlogp term; its value (beta * kl per row) is taken off again as a constant.
        delta = request.ref_logp - logp_now  # [k]
        kl = torch.exp(delta) - delta - 1.0  # [k]
        advantages = advantages - request.beta * kl
        correction = (request.weights * request.beta * kl).sum()
    out = linear_pg_loss(
        flat, weight, targets, advantages, index,
        old_logp=request.old_logp, ref_logp=request.ref_logp, weights=request.weights,
        eps_low=request.eps_low, eps_high=request.eps_high, beta=request.beta,
        temperature=temperature, reduction="sum", impl=impl,
    )  # fmt: skip
    loss = out.loss if correction is None else out.loss - correction
    return PGLossOutput(loss=loss, logp=out.logp, entropy=entropy.detach(), clipped=out.clipped)


def patch_fused_head(model: PreTrainedModel, *, temperature: float, impl: str, with_entropy: bool) -> None:
    """Route `model(..., fused_lm_head=True)` through tokrl's kernels (call after TRL's add_fused_lm_head)."""
    if getattr(model, PATCHED_ATTR, False):
        return
    inner_forward = model.forward  # TRL's fused forward; it calls the original one when fused_lm_head=False
    backbone_attr = _backbone_attr(model)

    @functools.wraps(type(model).forward)  # generate() validates model kwargs against this signature
    def tokrl_fused_forward(
        self, *args: Any, fused_lm_head: bool = False, labels=None, shift_labels=None, num_items_in_batch=None,
        pg_loss: PGLossRequest | None = None, **kwargs: Any,
    ):  # fmt: skip
        if not fused_lm_head:
            return inner_forward(*args, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)  # fmt: skip
        kwargs["use_cache"] = False
        hidden = getattr(self, backbone_attr)(*args, **kwargs).last_hidden_state  # [B, L, D]
        weight = self.get_output_embeddings().weight  # [V, D], looked up per call: PEFT/FSDP may swap it
        # An fp32 head (cast_lm_head_to_fp32) scores fp32 hidden states; kernels accumulate in fp32 anyway,
        # and autocast is off so forward and backward tile in the same dtype.
        hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        flat, index, targets, mask = _rows(hidden, labels, shift_labels)  # [B*L, D], [k], [k], [B, L']
        with torch.autocast(flat.device.type, enabled=False):
            if pg_loss is not None:
                return _pg_loss(flat, weight, targets, index, pg_loss, temperature, impl)
            logp, entropy = logprob_and_entropy(
                flat, weight, targets, index, temperature=temperature, impl=impl, with_entropy=with_entropy
            )  # [k], [k] | None
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero), as TRL does.
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)  # [B, L']
        entropy_grid = None if entropy is None else entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy_grid, label_mask=mask
        )

    model.forward = types.MethodType(tokrl_fused_forward, model)
    setattr(model, PATCHED_ATTR, True)
