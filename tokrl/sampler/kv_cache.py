"""A preallocated key/value cache the model's attention layers write into at one moving column.

Per layer l: keys[l], values[l] [B, H_kv, C, D] (C = capacity in tokens), allocated on the first write
(so head counts, head dims and dtype come from the model itself) or up front with `allocate_like`.
`column` is a 0-d int64 device tensor: a write of q tokens fills columns column .. column + q - 1 of every
layer; the engine advances `column` once per forward (`advance`), after all layers have written, so a
captured CUDA graph replays with fresh columns without any host value changing.

The attention layers call `update(key_states, value_states, layer_idx, ...)` (transformers 5.x, whether the
model names its argument `cache` or `past_key_values`) and attend over all C columns; the engine's additive
mask hides the columns not written yet. Only that method is used: masks are passed prebuilt, positions
explicitly, so nothing asks the cache for its length.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


class StaticKVCache(Cache):
    """Fixed-capacity cache of `capacity` columns (see the module docstring)."""

    is_compileable = True

    def __init__(self, capacity: int, device: torch.device | str) -> None:
        # Cache.__init__ builds transformers' own layer objects; this cache keeps plain tensors instead.
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.column = torch.zeros((), dtype=torch.int64, device=device)  # 0-d: the next column to write

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def allocate_like(self, other: StaticKVCache, batch: int) -> None:
        """Allocate zeroed layers with `other`'s head counts, head dims and dtype for `batch` rows."""
        self.keys = [other.keys[0].new_zeros(batch, k.shape[1], self.capacity, k.shape[3]) for k in other.keys]
        self.values = [other.values[0].new_zeros(batch, v.shape[1], self.capacity, v.shape[3]) for v in other.values]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write key/value states [B, H_kv, q, D] at columns column .. column + q - 1 of layer `layer_idx`;
        return the layer's whole keys and values [B, H_kv, C, D]."""
        if layer_idx == len(self.keys):  # first write to this layer: allocate it
            shape = (key_states.shape[0], key_states.shape[1], self.capacity)
            self.keys.append(key_states.new_zeros(*shape, key_states.shape[3]))
            self.values.append(value_states.new_zeros(*shape, value_states.shape[3]))
        columns = self.column + torch.arange(key_states.shape[2], device=self.column.device)  # [q]
        self.keys[layer_idx].index_copy_(2, columns, key_states)
        self.values[layer_idx].index_copy_(2, columns, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def advance(self, tokens: int) -> None:
        self.column.add_(tokens)

    def copy_rows_from(self, source: StaticKVCache, rows: torch.Tensor) -> None:
        """Row b of this cache's first rows.numel() rows, columns [0, source.capacity), becomes row rows[b]
        of `source` (rows [B'] int64): each prompt's prefill copied to its G completions."""
        n, width = rows.numel(), source.capacity
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values, strict=True):
            mine[:n, :, :width].copy_(theirs.index_select(0, rows))  # [B', H_kv, width, D]
        self.column.fill_(width)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.column)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.capacity

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        shape = tuple(self.keys[0].shape) if self.keys else None
        return f"StaticKVCache(layers={len(self.keys)}, shape={shape}, column={int(self.column)})"
