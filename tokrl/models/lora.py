"""LoRA on the policy, and the guard that keeps adapters off the LM head.

The fused loss multiplies hidden states by the raw LM-head weight (`tokrl.models.forward.lm_head_weight`), so
anything that changes the head *inside* the head module (a LoRA adapter on `lm_head`, a trainable copy from
`modules_to_save`, or an adapter on the input embedding that a tied head shares) would be silently ignored.
`check_lm_head_not_adapted` refuses such models; `apply_lora` always runs it. Which modules get adapters is
`tokrl.models.lora_targets`'s business.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from transformers import PreTrainedModel

from tokrl.models.forward import base_layer, lm_head_weight, transformers_model
from tokrl.models.lora_targets import ALL_LINEAR, check_lora_targets, resolve_lora_targets

# Every linear layer of the decoder (tokrl.models.lora_targets); on Qwen2/Llama the paper's modules.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (ALL_LINEAR,)


def _head_module_names(model: PreTrainedModel) -> list[str]:
    """Qualified names of the modules whose weight is the LM head: lm_head, plus embed_tokens when tied."""
    head_weight = lm_head_weight(model)
    names: list[str] = []
    for name, module in model.named_modules():  # parents come before their children
        if any(name.startswith(found + ".") for found in names):
            continue  # the base layer inside a peft wrapper: the wrapper's own name is the one peft matches
        if getattr(base_layer(module), "weight", None) is head_weight:
            names.append(name)
    return names


def check_lm_head_not_adapted(model: PreTrainedModel | PeftModel, *, allow_head_copy: bool = False) -> None:
    """Raise ValueError if a peft adapter or trainable copy touches the LM head (or a tied embedding).

    The fused loss multiplies hidden states by the raw LM-head weight (`lm_head_weight`), so an adapter on
    the head itself would train but never enter the loss, and one on a tied input embedding would change
    the input side only. Both are refused rather than silently ignored.
    allow_head_copy: accept a trainable copy of the output-embedding module itself (peft
    `modules_to_save=["lm_head"]`), for callers that read the head weight through the module on every call
    (`get_output_embeddings().weight`, which peft resolves to the active copy, or to the original with the
    adapter disabled) and let the kernels compute its dW. tokrl's own trainer reads the raw weight once, so
    it never allows it. LoRA on the head, and anything on a tied input embedding, stay refused.
    """
    hf = transformers_model(model)
    head_weight = lm_head_weight(model)
    head_module = hf.get_output_embeddings()
    for name, module in hf.named_modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            if getattr(base_layer(module), "weight", None) is head_weight:
                if allow_head_copy and module is head_module and isinstance(module, ModulesToSaveWrapper):
                    continue
                wrapper = f"{type(module).__module__}.{type(module).__name__}"
                raise ValueError(_head_refusal(name, f"is wrapped by peft ({wrapper})"))
    if isinstance(model, PeftModel):
        head_name = next(name for name, module in hf.named_modules() if module is head_module)
        for config in model.peft_config.values():
            _check_peft_config(config, _head_module_names(hf), copy_allowed=head_name if allow_head_copy else None)


def _check_peft_config(config: object, head_names: Sequence[str], copy_allowed: str | None = None) -> None:
    """Raise ValueError if a peft config's target_modules / modules_to_save would select a head module
    (a modules_to_save copy of `copy_allowed` excepted)."""
    for name in head_names:
        if getattr(config, "target_modules", None) is not None and check_target_module_exists(config, name):
            raise ValueError(_head_refusal(name, "matches LoRA target_modules"))
        for saved in getattr(config, "modules_to_save", None) or ():
            # peft's rule: a module is copied when its qualified name ends with an entry.
            if (name == saved or name.endswith("." + saved)) and name != copy_allowed:
                raise ValueError(_head_refusal(name, f"is listed in modules_to_save ({saved!r})"))


def _head_refusal(name: str, what: str) -> str:
    return (
        f"refusing to adapt the LM head: module {name!r} {what}. The fused policy-gradient loss multiplies "
        "hidden states by the raw LM-head weight (tied to the input embedding in Qwen2-style models), so "
        "an adapter or trainable copy there would be silently ignored. Adapt only the decoder's layers "
        f"(tokrl's default target {ALL_LINEAR!r} does)."
    )


def apply_lora(
    model: PreTrainedModel | PeftModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = DEFAULT_LORA_TARGETS,
) -> PeftModel:
    """Wrap `model` with a LoRA adapter (paper defaults r=16, alpha=32, dropout 0.05; targets: all-linear).

    target_modules: "all-linear" (every linear layer of the decoder, never the LM head or an embedding: on
    Qwen2 the paper's q/k/v/o/gate/up/down_proj) or module names, each of which must exist in the model
    (`tokrl.models.lora_targets`). Only the adapter trains; peft freezes the base weights. An already peft-wrapped
    model is returned as is, after the LM-head check. Missing targets and targets that would select the LM
    head (or a tied embedding) are refused before the model is touched (peft wraps in place).
    """
    if isinstance(model, PeftModel):
        check_lm_head_not_adapted(model)
        return model
    check_lora_targets(model, target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=resolve_lora_targets(model, target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    check_lm_head_not_adapted(model)
    _check_peft_config(config, _head_module_names(model))
    with warnings.catch_warnings():  # peft's notes the user can do nothing about
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to False.*Conv1D.*")  # GPT-2: peft flips it
        peft_model = get_peft_model(model, config)
    check_lm_head_not_adapted(peft_model)
    return peft_model


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight is counted once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
