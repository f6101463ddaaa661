"""TRL's fused LM head served by `tokrl_kernels`: the model forward behind `model(..., fused_lm_head=True)`.

TRL (>= 1.16) never builds [B, L, V] logits in its RL trainers: `trl.trainer.utils.add_fused_lm_head` replaces
`model.forward`, and a call with `fused_lm_head=True` runs the backbone, then scores the positions whose
next-token label is not -100 with `ChunkedLogProbFunction`. `patch_fused_head` wraps that forward once more:

    hidden = backbone(...).last_hidden_state                      [B, L, D]
    index  = b * L + t  for every (b, t) with label[b, t + 1] != -100   [k]  (pre-shifted labels: label[b, t])
    logp   = linear_logprob(hidden.view(B * L, D), W, label[index], index, temperature=T, **head)   [k] fp32
    log_probs = zeros(B, L - 1).masked_scatter(mask, logp)      (TRL's FusedCausalLMOutput contract)

Rows are picked by index, so no [k, D] copy of the hidden states is made, and no [k, V] logits exist. `head` is
the model's logit scale and soft-cap (Cohere, Granite, Gemma-2: `tokrl.models.head`, read the way TRL reads
them). W is looked up on every call through the head module, so a trainable copy of the head (peft
`modules_to_save=["lm_head"]`) is the weight scored, and trained through the kernels' dW; with the adapter
disabled (TRL's reference pass) peft hands back the original. An MoE call with `output_router_logits=True` (TRL
asks for it whenever `router_aux_loss_coef` != 0) also returns the router load-balancing loss, computed from the
backbone's router logits by the function TRL uses (`aux_loss`).
A call without `fused_lm_head` (generation) goes to the forward underneath, unchanged.
Why a forward wrapper (the project otherwise avoids patching forwards): TRL's fused-head protocol *is* a patched
`model.forward`, and serving it there keeps every call going through the wrappers around the model (DDP's
gradient hooks, PEFT's adapter switching for the reference pass, accelerate's autocast); overriding the trainer's
`_get_per_token_logps_and_entropies` instead would have to reach past them to the backbone.

`pg_loss=PGLossRequest(...)` (used by `trl_loss`) makes the same forward return the policy-gradient loss of
`linear_pg_loss` on those rows instead (`pg_rows`), so the loss is computed inside the one model call that
DDP/PEFT wrap.

Refused, with the reason (`check_head_servable`), rather than computed wrongly: a bias on the LM head, a LoRA
adapter on the head, an adapter or trainable copy on a tied input embedding.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from transformers import PreTrainedModel
from trl.trainer.utils import FusedCausalLMOutput

from tokrl.integrations.entropy import logprob_and_entropy
from tokrl.integrations.pg_rows import PGLossOutput, PGLossRequest, pg_loss_rows
from tokrl.models.head import LogitTransform, logit_transform

__all__ = ["PGLossOutput", "PGLossRequest", "UnsupportedByTokrl", "check_head_servable", "patch_fused_head"]
PATCHED_ATTR = "_tokrl_fused_head"


class UnsupportedByTokrl(ValueError):
    """The model or the trainer's configuration cannot be served exactly by tokrl's kernels."""


def check_head_servable(model: PreTrainedModel, adapted: torch.nn.Module | None = None) -> None:
    """Raise UnsupportedByTokrl naming the first reason tokrl's head would compute something TRL does not.

    model: the transformers model whose forward gets patched; adapted: the PEFT model around it, if any.
    """
    from tokrl.models.lora import check_lm_head_not_adapted

    name = type(model).__name__
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise UnsupportedByTokrl(f"{name}: no output embedding with a `weight` (get_output_embeddings())")
    if getattr(head, "bias", None) is not None:
        raise UnsupportedByTokrl(
            f"{name}: the LM head has a bias ({tuple(head.bias.shape)}); tokrl's kernels compute h @ W.T without one."
        )
    try:
        check_lm_head_not_adapted(adapted if adapted is not None else model, allow_head_copy=True)
    except ValueError as error:
        raise UnsupportedByTokrl(f"{name}: an adapted LM head cannot be served: {error}") from error


def router_aux_loss(model: PreTrainedModel, router_logits: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The MoE load-balancing loss of one forward, as TRL's fused head computes it (Mixtral's function, which every
    MoE family of transformers shares): a scalar with gradient to the routers."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    config = model.config.get_text_config()
    return load_balancing_loss_func(router_logits, config.num_experts, config.num_experts_per_tok, attention_mask)


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


def patch_fused_head(model: PreTrainedModel, *, temperature: float, impl: str, with_entropy: bool) -> None:
    """Route `model(..., fused_lm_head=True)` through tokrl's kernels (call after TRL's add_fused_lm_head)."""
    if getattr(model, PATCHED_ATTR, False):
        return
    inner_forward = model.forward  # TRL's fused forward; it calls the original one when fused_lm_head=False
    backbone_attr = _backbone_attr(model)
    head: LogitTransform = logit_transform(model)
    output_router_logits_by_default = bool(getattr(model.config.get_text_config(), "output_router_logits", False))

    @functools.wraps(type(model).forward)  # generate() validates model kwargs against this signature
    def tokrl_fused_forward(
        self,
        *args: Any,
        fused_lm_head: bool = False,
        labels=None,
        shift_labels=None,
        num_items_in_batch=None,
        pg_loss: PGLossRequest | None = None,
        **kwargs: Any,
    ):
        if not fused_lm_head:
            return inner_forward(
                *args, labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch, **kwargs
            )
        kwargs["use_cache"] = False
        if output_router_logits_by_default:  # as the model's own forward and TRL's fused head do
            kwargs.setdefault("output_router_logits", True)
        backbone_out = getattr(self, backbone_attr)(*args, **kwargs)
        aux_loss = None
        if kwargs.get("output_router_logits"):
            aux_loss = router_aux_loss(self, backbone_out.router_logits, kwargs.get("attention_mask"))
        hidden = backbone_out.last_hidden_state  # [B, L, D]
        weight = self.get_output_embeddings().weight  # [V, D], looked up per call: PEFT/FSDP may swap it
        # An fp32 head (cast_lm_head_to_fp32) scores fp32 hidden states; kernels accumulate in fp32 anyway,
        # and autocast is off so forward and backward tile in the same dtype.
        hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        flat, index, targets, mask = _rows(hidden, labels, shift_labels)  # [B*L, D], [k], [k], [B, L']
        with torch.autocast(flat.device.type, enabled=False):
            if pg_loss is not None:
                out = pg_loss_rows(flat, weight, targets, index, pg_loss, temperature=temperature, impl=impl, head=head)
                out.aux_loss = aux_loss
                return out
            logp, entropy = logprob_and_entropy(
                flat, weight, targets, index, temperature=temperature, impl=impl, with_entropy=with_entropy, head=head
            )  # [k], [k] | None
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero), as TRL does.
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)  # [B, L']
        entropy_grid = None if entropy is None else entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -log_probs.sum() / count
        if aux_loss is not None:
            loss = loss + getattr(self.config.get_text_config(), "router_aux_loss_coef", 0.0) * aux_loss
        return FusedCausalLMOutput(
            loss=loss, log_probs=log_probs, entropy=entropy_grid, label_mask=mask, aux_loss=aux_loss
        )

    model.forward = types.MethodType(tokrl_fused_forward, model)
    setattr(model, PATCHED_ATTR, True)
