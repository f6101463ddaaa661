"""Counting what a function launches: the aten ops that would each be a kernel on a GPU, and host syncs.

`count_ops(fn, layers)` runs `fn` once under `torch.profiler` (CPU activity only: it works without a GPU)
and walks each top-level op down to the ops that do work of their own: a view (`transpose`, `slice`: only
metadata) or an allocation (`empty*`) counts none, a composite op (`linear`, `to`, `reshape`, `dropout`)
counts what it calls (nothing when it returned its input), and an op with a kernel (`addmm`, `_to_copy`,
`index_copy_`, `_scaled_dot_product_*`) counts one, whatever it calls inside (its CPU implementation, not
more launches). That is what a CUDA stream would run one kernel each for (a cuBLAS call can be one or two).
`aten::_local_scalar_dense` (`.item()`, `bool(t)`: a device-to-host sync) is counted apart, as `syncs`.
Ops inside each module of `layers` (the decoder layers) are also counted per layer, through a profiler
range that forward hooks open and close.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_ALLOCATIONS = frozenset({"empty", "empty_strided", "empty_like", "_unsafe_view", "lift_fresh", "resize_"})
_SYNC = "_local_scalar_dense"
_LAYER_RANGE = "tokrl::decoder_layer"


@functools.cache
def _kind(name: str) -> str:
    """What the aten op `name` (without "aten::") is: "view", "composite" (it only calls other ops),
    "allocation" or "kernel"."""
    if name in _ALLOCATIONS:
        return "allocation"
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return "kernel"
    overloads = [getattr(packet, name) for name in packet.overloads()]
    for op in overloads:  # composite first: `to`, `reshape` may alias (a view) or copy (what they call)
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
                return "composite"
        except RuntimeError:  # an overload the dispatcher does not know (TorchScript-only)
            continue
    return "view" if any(op.is_view for op in overloads) else "kernel"


def _is_kernel(name: str) -> bool:
    return _kind(name) == "kernel"


def _is_decomposition(name: str) -> bool:
    return _kind(name) == "composite"


@dataclass
class OpCount:
    """Kernel ops of one call: `total`, per decoder layer, host syncs, and by op name."""

    total: int = 0
    per_layer: list[int] = field(default_factory=list)
    syncs: int = 0
    by_name: Counter[str] = field(default_factory=Counter)

    @property
    def ops_per_layer(self) -> float:
        return sum(self.per_layer) / len(self.per_layer) if self.per_layer else 0.0

    @property
    def outside_layers(self) -> int:
        return self.total - sum(self.per_layer)


def decoder_layers(body: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a transformers causal LM: its longest ModuleList (model.layers, transformer.h)."""
    lists = [m for m in body.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def count_ops(fn: Callable[[], object], layers: Sequence[torch.nn.Module] = ()) -> OpCount:
    """Run `fn` once under the profiler and count its kernel ops and syncs (module docstring)."""
    ranges: list[torch.profiler.record_function] = []

    def enter(*_: object) -> None:
        ranges.append(torch.profiler.record_function(_LAYER_RANGE))
        ranges[-1].__enter__()

    def leave(*_: object) -> None:
        ranges.pop().__exit__(None, None, None)

    hooks = [
        hook
        for layer in layers
        for hook in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))
    ]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for hook in hooks:
            hook.remove()
    count = OpCount()
    for event in prof.events():
        if event.cpu_parent is None:
            for op in _kernel_ops(event):
                name = op.name.removeprefix("aten::")
                count.syncs += name == _SYNC
                if name != _SYNC:
                    count.total += 1
                    count.by_name[name] += 1
        if event.name == _LAYER_RANGE and _outermost_layer(event.cpu_parent) is None:
            count.per_layer.append(sum(op.name != f"aten::{_SYNC}" for op in _kernel_ops(event)))
    return count


def _kernel_ops(event: Any) -> Iterator[Any]:
    """The outermost aten ops with work of their own at or below `event`: a view or an allocation is none,
    a composite op is what it decomposes into, and an op with its own kernel is one (what it calls inside
    is its implementation on this device, not more launches)."""
    name = event.name.removeprefix("aten::")
    if event.name.startswith("aten::") and (name == _SYNC or _is_kernel(name)):
        yield event
        return
    if event.name.startswith("aten::") and not _is_decomposition(name):
        return  # a view or an allocation
    for child in event.cpu_children:
        yield from _kernel_ops(child)


def _outermost_layer(event: Any) -> Any | None:
    """The outermost decoder-layer range at or above `event` (None when it is outside every layer)."""
    found = None
    while event is not None:
        if event.name == _LAYER_RANGE:
            found = event
        event = event.cpu_parent
    return found
