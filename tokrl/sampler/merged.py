"""The `tokrl-merged` sampler: the tokrl engine with each LoRA adapter merged into a copy of its base weight.

Unmerged, an adapted linear costs five kernels in a decode step (base, x A^T, B^T, scale, add), so a Qwen2
layer with LoRA on q/k/v/o/gate/up/down launches 68 ops instead of its own 40 (tokrl/sampler/profiling.py;
on a GPU, launches dominate a 32-row decode step). This sampler samples with

    W' = W + scaling * B A        rounded to the base weight's dtype, one copy per adapted weight

refreshed from the trained A and B at every call (a copy and an add per weight, outside the decode loop),
with the adapters switched off inside the call (`adapters_off`: what peft's `disable_adapter` does to the LoRA
layers, as the KL reference forward does), so a decode step runs the base model's kernels only. The trained
weights and peft's modules are untouched. The policy sampled is the trained one up to the rounding of W'; the
sampler's log-probs are that policy's, so `sampler_logp_gap_*` measures the difference. The cost is memory: a
copy of every adapted weight (for Qwen2-1.5B with LoRA on all 7 projections, 1.3 B parameters: 2.6 GB in bf16),
so `auto` picks it only where the copies fit in a share of the free memory (`registry.auto_choice`; the
device's, or the system's on a CPU).

It serves peft models whose every tuner layer is a plain LoRA linear (no DoRA or other variant, no LoRA on
MoE expert parameters, no `modules_to_save` copies: switching adapters off would switch those off too);
`unsupported_reason` names what else it meets.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch

from tokrl.models.forward import transformers_model
from tokrl.sampler.adapters import WeightCopies, new_version
from tokrl.sampler.native import TokrlSampler
from tokrl.sampler.registry import register_sampler


def _lora_linear_class() -> type | None:
    try:
        from peft.tuners.lora import Linear
    except ImportError:  # peft missing: nothing to merge
        return None
    return Linear


def _tuner_layers(body: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every peft tuner layer, then every trainable-copy wrapper, inside `body`, by name (one walk)."""
    tuners, wrappers = [], []
    for name, m in body.named_modules():
        if hasattr(m, "active_adapters") and hasattr(m, "merged"):
            tuners.append((name, m))
        elif type(m).__name__ == "ModulesToSaveWrapper":
            wrappers.append((name, m))
    return tuners + wrappers


@contextmanager
def adapters_off(body: torch.nn.Module) -> Iterator[None]:
    """`body`'s LoRA layers with their adapters switched off for the block, each restored after: what peft's
    `disable_adapter` does to them (`enable_adapters` per layer), without its model-wide status walk, which
    cost ~1.8 ms per sampler call on the tiny default. Only for models `merge_reason` accepts (no
    ModulesToSaveWrapper, which peft's context also switches)."""
    layers = [layer for _, layer in _tuner_layers(body)]
    was_off = [bool(layer.disable_adapters) for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, off in zip(layers, was_off, strict=True):
            layer.enable_adapters(not off)


def merge_reason(model: torch.nn.Module) -> str | None:
    """Why `model`'s adapters cannot be sampled merged (None when they can)."""
    if not callable(getattr(model, "disable_adapter", None)):
        return f"{type(model).__name__} is not a peft model (nothing to merge)"
    linear = _lora_linear_class()
    layers = _tuner_layers(transformers_model(model))
    if not layers:
        return "the model has no LoRA layers (nothing to merge)"
    for name, layer in layers:
        if linear is None or type(layer) is not linear:
            return f"{name} is a {type(layer).__name__}, not a plain LoRA linear"
        if any(adapter in getattr(layer, "lora_variant", {}) for adapter in layer.active_adapters):
            return f"{name} runs a LoRA variant (DoRA or another), which is not merged here"
        if layer.merged:
            return f"{name} is merged into its base weight already"
    return None


@dataclass
class MergedWeights(WeightCopies):
    """W' = W + sum of the active adapters' scaling * B A per adapted weight, in W's dtype (module docstring)."""

    layers: dict[str, torch.nn.Module] = field(default_factory=dict)  # copy name -> its LoRA layer

    def refresh(self) -> None:
        with torch.no_grad():
            for name, copy in self.copies.items():
                layer = self.layers[name]
                copy.copy_(layer.base_layer.weight)
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        copy.add_(layer.get_delta_weight(adapter))  # rounded once, into W's dtype


_HELD: weakref.WeakKeyDictionary[torch.nn.Module, MergedWeights] = weakref.WeakKeyDictionary()


def merged_weights(body: torch.nn.Module) -> MergedWeights:
    """This call's merged copies for `body`, refreshed from the trained adapters (same tensors as the last
    call's while the layers are the same)."""
    layers = {f"{name}.base_layer.weight": layer for name, layer in _tuner_layers(body)}
    held = _HELD.get(body)
    if held is None or held.layers.keys() != layers.keys() or any(held.layers[n] is not m for n, m in layers.items()):
        copies = {name: torch.empty_like(layer.base_layer.weight) for name, layer in layers.items()}
        held = _HELD[body] = MergedWeights(copies, new_version(), layers)
    held.refresh()
    return held


@register_sampler("tokrl-merged")
class MergedTokrlSampler(TokrlSampler):
    """The tokrl engine sampling with LoRA merged into copies of the base weights (module docstring)."""

    def unsupported_reason(self, model: torch.nn.Module) -> str | None:
        return super().unsupported_reason(model) or merge_reason(model)

    @staticmethod
    def merge_reason(model: torch.nn.Module) -> str | None:
        return merge_reason(model)

    @staticmethod
    def copy_bytes(model: torch.nn.Module) -> int:
        """Bytes of the merged copies this sampler would hold for `model` (one per adapted base weight)."""
        weights = [layer.base_layer.weight for _, layer in _tuner_layers(transformers_model(model))]
        return sum(w.numel() * w.element_size() for w in weights)

    def weights(self, model: torch.nn.Module, body: torch.nn.Module) -> WeightCopies:
        return merged_weights(body)

    def session(self, model: torch.nn.Module) -> AbstractContextManager[None]:
        return adapters_off(transformers_model(model))


__all__: Sequence[str] = ["MergedTokrlSampler", "merge_reason", "merged_weights"]
