"""LoRA adapters in the model's dtype while the sampler runs.

peft keeps adapter weights in fp32 under a bf16/fp16 base (its `autocast_adapter_dtype` default), so every
adapted linear casts x up, runs A and B in fp32, adds into a result promoted to fp32 and casts it back: 7
kernels where 5 would do (base, A, B, scale, add). The sampler runs with copies of A and B in the base
layer's dtype instead, refreshed from the trained weights at every sampler call (one copy per weight per
call, outside the decode loop):

    lora(x) = (x @ A16^T) @ B16^T * scaling        A16, B16 = A, B rounded to the base layer's dtype

So the sampled policy is the trained one up to that rounding (nothing is merged; peft's modules and the
trained weights are untouched), and since the sampler returns the log-probs of the policy it sampled from,
`sampler_logp_gap_*` measures the difference from the loss's fp32 adapters. The copies keep their addresses
from call to call (a CUDA graph reads them) and reach the forward through `torch.func.functional_call`.
DoRA and other peft variants keep their own weights (their forward reads more than A and B).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import torch

_VERSIONS = itertools.count(1)


@dataclass
class WeightCopies:
    """Tensors the sampler's forwards read instead of the model's parameters: `copies` by parameter name
    (relative to the model body); `version` changes whenever they are reallocated (a graph reads addresses)."""

    copies: dict[str, torch.Tensor]
    version: int = 0


def new_version() -> int:
    return next(_VERSIONS)


@dataclass
class AdapterCopies(WeightCopies):
    """Adapter weights in the model's dtype; `sources` are the trained parameters they copy."""

    sources: dict[str, torch.nn.Parameter] = field(default_factory=dict)

    def refresh(self) -> None:
        for name, copy in self.copies.items():
            copy.copy_(self.sources[name].detach())


_HELD: weakref.WeakKeyDictionary[torch.nn.Module, AdapterCopies] = weakref.WeakKeyDictionary()


def _mismatched_adapter_weights(body: torch.nn.Module) -> dict[str, tuple[torch.nn.Parameter, torch.dtype]]:
    """name -> (adapter weight, base dtype) for every vanilla LoRA A/B weight whose dtype differs from its
    base layer's floating-point weight."""
    found: dict[str, tuple[torch.nn.Parameter, torch.dtype]] = {}
    for name, module in body.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        base_weight = getattr(getattr(module, "base_layer", None), "weight", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        if not isinstance(base_weight, torch.Tensor) or not base_weight.dtype.is_floating_point:
            continue
        variants = getattr(module, "lora_variant", None) or {}
        for adapter in lora_a:
            if adapter in variants or adapter not in lora_b:
                continue
            for part, table in (("lora_A", lora_a), ("lora_B", lora_b)):
                weight = getattr(table[adapter], "weight", None)
                if isinstance(weight, torch.nn.Parameter) and weight.dtype != base_weight.dtype:
                    found[f"{name}.{part}.{adapter}.weight"] = (weight, base_weight.dtype)
    return found


def adapter_copies(body: torch.nn.Module) -> AdapterCopies:
    """This call's copies for `body` (empty when every adapter already runs in its base layer's dtype),
    refreshed from the trained weights; the same tensors as the last call's while the adapters are."""
    wanted = _mismatched_adapter_weights(body)
    held = _HELD.get(body)
    same = (
        held is not None
        and held.sources.keys() == wanted.keys()
        and all(held.sources[n] is w and held.copies[n].dtype == d for n, (w, d) in wanted.items())
    )
    if not same:
        copies = {name: torch.empty_like(weight, dtype=dtype) for name, (weight, dtype) in wanted.items()}
        held = AdapterCopies(copies, new_version(), {name: weight for name, (weight, _) in wanted.items()})
        _HELD[body] = held
    held.refresh()
    return held
