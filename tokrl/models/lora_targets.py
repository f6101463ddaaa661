"""Which modules get LoRA adapters, checked against the model before anything is written.

`lora_target_modules` is either `all-linear` (the default) or a list of module names:

- `all-linear`: every linear layer of the decoder (`torch.nn.Linear`, and transformers' `Conv1D` in GPT-2-style
  models), never the LM head or an embedding: peft's own "all-linear" rule, resolved here into the layers'
  qualified names. For Qwen2/Llama these are q/k/v/o/gate/up/down_proj, the paper's modules; Phi-3 fuses them
  into qkv_proj and gate_up_proj, GPT-2 calls them c_attn/c_fc/c_proj. In MoE models (transformers 5) the
  experts are fused 3-D parameters and Mixtral's router a custom module, not linear layers: all-linear adapts
  attention (and Qwen2-MoE's shared expert), not the experts. peft's own string would add Mixtral's experts as
  parameter adapters, which refuse LoRA dropout (the default 0.05), and not Qwen2-MoE's: resolving it here
  makes every family behave the same.
- a list: peft's rule, a module is adapted when its qualified name equals an entry or ends with "." + entry.
  Every entry must match at least one module: an entry that matches none is a typo or another family's name,
  and is refused with the model's own linear layer names (`check_lora_targets`).

`check_lora_targets_by_name` runs the check on the model's architecture alone (its config, built on the meta
device: no weights are read or allocated), so `tokrl train` refuses a bad list before the warm start or any
output is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from tokrl.models.names import ALL_LINEAR, TINY_NAME, is_all_linear, target_entries
from tokrl.models.tiny import tiny_config

_LINEAR_TYPES = (torch.nn.Linear, Conv1D)


def resolve_lora_targets(model: torch.nn.Module, targets: str | Sequence[str]) -> list[str]:
    """The `target_modules` list for peft's LoraConfig: every linear layer's qualified name for "all-linear"
    (`linear_layer_names`), else the entries as given (peft matches them by name suffix)."""
    return linear_layer_names(model) if is_all_linear(targets) else target_entries(targets)


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the model's linear layers that `all-linear` adapts: Linear/Conv1D modules, without
    the output embedding (the LM head)."""
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    return [name for name, module in model.named_modules() if isinstance(module, _LINEAR_TYPES) and module is not head]


def _matches(name: str, entry: str) -> bool:
    return name == entry or name.endswith("." + entry)


def missing_lora_targets(model: torch.nn.Module, targets: str | Sequence[str]) -> list[str]:
    """The entries of a target list that match no module of `model` (none for all-linear)."""
    if is_all_linear(targets):
        return []
    names = [name for name, _ in model.named_modules()]
    return [entry for entry in target_entries(targets) if not any(_matches(name, entry) for name in names)]


def check_lora_targets(model: torch.nn.Module, targets: str | Sequence[str]) -> None:
    """Raise ValueError (one line) naming the target entries `model` does not have, and the names it does have."""
    missing = missing_lora_targets(model, targets)
    if is_all_linear(targets) and not linear_layer_names(model):
        raise ValueError(f"lora_target_modules: {type(model).__name__} has no linear layer for {ALL_LINEAR!r}")
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linear_layer_names(model)})
        raise ValueError(
            f"lora_target_modules: {type(model).__name__} has no module named {', '.join(map(repr, missing))}; "
            f"its linear layers are {', '.join(leaves)} (or use {ALL_LINEAR!r})"
        )


def model_config(name_or_path: str) -> PretrainedConfig | None:
    """The model's config without its weights: tiny, a local directory, or a hub id already in the local cache;
    None when it cannot be read without the network (the check then runs after loading)."""
    if name_or_path == TINY_NAME:
        return tiny_config()
    path = os.path.expanduser(name_or_path)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None


def model_skeleton(config: PretrainedConfig) -> PreTrainedModel:
    """The causal LM of `config` on the meta device: its module tree, no memory and no initialisation."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_lora_targets_by_name(name_or_path: str, targets: str | Sequence[str]) -> None:
    """`check_lora_targets` on the architecture of `name_or_path`, before any weights load (skipped when the
    config cannot be read offline)."""
    target_entries(targets)  # "all-linear" mixed with names fails without a model
    config = model_config(name_or_path)
    if config is not None:
        check_lora_targets(model_skeleton(config), targets)
