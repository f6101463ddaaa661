"""The key/value caches the tokrl engine hands to a transformers model's forward (the Cache API it reads).

Two caches, one job each:
- `PromptCache`: what the prefill of P prompts [P, L] produces. Each layer's keys/values [P, H_kv, L, D] are
  kept as the forward made them (no copy); the engine then copies them to the decode rows.
- `DecodeCache`: per layer, views [R, H_kv, C, D] of the sampler's preallocated buffers (tokrl/sampler/
  state.py's Arena). A forward writes its new columns at `columns` (a device tensor, so a captured CUDA graph
  replays with fresh columns; an eager decode writes at the host's `length`) and attends over the first
  `window` columns only: a host integer the engine sets per decode step (rounded up to a bucket when graphs
  replay the steps), so attention costs what is filled rather than the whole capacity.

Attention layers call `update(key_states, value_states, layer_idx, ...)` (transformers 5.x, whether the
forward names its cache argument `cache` or `past_key_values`). Masks come prebuilt (4-D, additive) and
positions explicitly, so the model never needs a length from the device; the bookkeeping transformers' own
mask helpers read (`layers`, `is_sliding`, `get_seq_length`, `get_mask_sizes`) is real and answers from host
integers (no sync). Every layer is a full-attention layer to the cache: sliding windows are applied by the
engine's attention function (tokrl/sampler/attention.py).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _Layer(CacheLayerMixin):
    """One layer's keys and values (the Cache API's per-layer object); its cache does the writing."""

    is_compileable = True

    def __init__(self, cache: _EngineCache, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.cache, self.index, self.keys, self.values, self.is_initialized = cache, index, keys, values, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # allocated by the cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):  # noqa: ANN201
        return self.cache.update(key_states, value_states, self.index)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.window, 0

    def get_seq_length(self) -> int:
        return self.cache.length

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class _EngineCache(Cache):
    """Host-side bookkeeping shared by both caches: `length` columns filled before the current forward (what
    transformers means by the cache's sequence length), attention over `window` columns."""

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.length = 0  # columns filled (host int: transformers may ask, and asking must not sync)
        self.window = 0  # columns attention reads

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.window, 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.layers[0].get_max_length() if self.layers else -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:  # transformers < 5.2x asks under this name
        return self.get_max_length()


class PromptCache(_EngineCache):
    """The prefill's keys/values [P, H_kv, L, D] per layer, as the model computed them."""

    def __init__(self, width: int, device: torch.device) -> None:
        super().__init__()
        self.window = width  # `length` (columns filled before the forward) stays 0 until the prefill is done
        self.columns = torch.arange(width, device=device)  # [L] the columns the prefill fills

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx != len(self.layers):
            raise RuntimeError(f"prefill: layer {layer_idx} wrote out of order (expected {len(self.layers)})")
        self.layers.append(_Layer(self, layer_idx, key_states, value_states))
        return key_states, value_states

    def shapes(self) -> list[tuple[int, int, int]]:
        """(H_kv, D_key, D_value) of every layer: what the decode buffers must hold."""
        return [(layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]) for layer in self.layers]


class DecodeCache(_EngineCache):
    """Views [R, H_kv, C, D] of preallocated buffers, written at `columns` [q], read over `window` columns."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor) -> None:
        super().__init__()
        self.layers = [_Layer(self, i, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
        self.columns = columns  # [1] int64 on the device: the column the next decode step writes
        # True when no captured graph replays the steps: each writes at the host's `length` (the same column: a
        # narrow copy, ~4x cheaper on a CPU than index_copy_ with a device index, which only a graph needs) and
        # attends over the filled columns only (`state.window_for`).
        self.eager = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write key/value states [R, H_kv, q, D] at `columns`; return the layer's first `window` columns."""
        layer = self.layers[layer_idx]
        if self.eager:
            layer.keys.narrow(2, self.length, key_states.shape[2]).copy_(key_states)  # [R, H_kv, q, D]
            layer.values.narrow(2, self.length, value_states.shape[2]).copy_(value_states)
        else:
            layer.keys.index_copy_(2, self.columns, key_states)  # [R, H_kv, C, D]
            layer.values.index_copy_(2, self.columns, value_states)
        return layer.keys[:, :, : self.window], layer.values[:, :, : self.window]  # [R, H_kv, W, D]

    def load_prompts(self, prompts: PromptCache, source: torch.Tensor) -> None:
        """Row b (of the first source.numel()) gets prompt source[b]'s L columns (source [B] int64)."""
        rows, width = source.numel(), prompts.length
        for mine, theirs in zip(self.layers, prompts.layers, strict=True):
            mine.keys[:rows, :, :width] = theirs.keys[source]  # [B, H_kv, L, D]
            mine.values[:rows, :, :width] = theirs.values[source]
        self.length = width
