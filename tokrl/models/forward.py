"""What the loss reads from a model: the final hidden states and the raw LM-head weight, never logits.

The trainer hands the selected hidden rows, together with the LM-head weight from `lm_head_weight` [V, D], to
the fused log-prob kernel, with the model's logit scale / soft-cap (`tokrl.models.head`). Prompts are
left-padded for generation, so `hidden_states` passes position ids counted over real tokens (as `generate`
does): the first real token of every row is position 0, the positions the completions were sampled with. RoPE
cancels a constant shift only up to rounding; other position schemes do not cancel it at all.

A peft model is looked through in one place (`transformers_model`, `base_layer`): the LoRA layers stay
injected in the transformers model, and a wrapped layer keeps its original weight underneath.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper


def transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft model (LoRA layers injected in place), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The original layer under a peft wrapper (LoRA layer, modules_to_save or trainable-tokens copy)."""
    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    if isinstance(module, AuxiliaryTrainingWrapper):
        return module.original_module
    return module


def set_training(model: torch.nn.Module, mode: bool) -> None:
    """`model.train(mode)`, skipped when every module is already in that mode: the call sets the flag on each
    module through nn.Module.__setattr__ (about 0.3 ms on the tiny model), and a step switches modes
    several times, mostly to the mode the model is already in."""
    if any(module.training != mode for module in model.modules()):
        model.train(mode)


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The raw output-embedding weight [V, D] (the tied input embedding for Qwen2-style models)."""
    head = transformers_model(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(transformers_model(model)).__name__} has no output embedding (is it a causal LM?)")
    return base_layer(head).weight  # [V, D]


def decoder_stack(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of a causal LM (a peft model's too): final norm included, no LM head (e.g. Qwen2Model)."""
    return transformers_model(model).base_model


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask a decoder takes in place of a boolean one (same shape): 0 where `visible`, the
    dtype's min elsewhere (not -inf: a fully hidden pad row then averages values instead of producing NaN)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states [B, L, D] that feed the LM head, without computing logits.

    input_ids [B, L] int64, attention_mask [B, L] (1 real, 0 pad; left padding expected). Runs the
    decoder body (LoRA layers included) with position ids counted over real tokens only, so a left-padded
    row gives the same hidden states as the unpadded sequence, and `hidden_states(...) @ W.T` equals the
    model's logits under the same positions, before its logit scale / soft-cap (`tokrl.models.head`).
    Every family of tests/model_families.py (Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo-2, Qwen2-MoE,
    Mixtral, Cohere, Granite, GPT-2) needs nothing more than these three inputs. Rows at padded positions are
    meaningless.
    """
    body = decoder_stack(model)
    # Left padding: the first real token is position 0, as in generate; pads get 0 (masked out anyway).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, L]
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state  # [B, L, D]


def router_aux_loss_note(model: torch.nn.Module) -> str | None:
    """The line a run logs once for a Mixture-of-Experts model whose config weights a router load-balancing loss
    (`router_aux_loss_coef` != 0, where TRL would add it): tokrl's loss is the policy gradient alone. None otherwise.
    """
    config = transformers_model(model).config.get_text_config()
    coef = getattr(config, "router_aux_loss_coef", 0.0) or 0.0
    if not hasattr(config, "output_router_logits") or coef == 0.0:
        return None
    name = type(transformers_model(model)).__name__
    return (
        f"{name}: the router load-balancing loss (router_aux_loss_coef={coef:g}) is left out; tokrl's loss is the "
        "policy-gradient loss on the selected tokens alone"
    )
