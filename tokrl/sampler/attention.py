"""The attention function the tokrl engine runs inside a transformers model's forward.

While the engine runs a model (`engine_attention`), the model's config names `tokrl_sampler` as its attention
implementation. Every decoder tokrl serves looks its attention function up by that name in transformers'
AttentionInterface on each call, so each attention layer hands this function its query [R, H, q, D], the
cache window's keys and values [R, H_kv, W, D] and the engine's additive mask [R, 1, q, >= W] (0 visible,
dtype-min hidden). The model's own code (projections, norms, RoPE, LoRA) runs unchanged.

Grouped-query attention without copying K/V: the G = H / H_kv query heads that share a KV head (heads
j*G .. j*G + G - 1, as transformers' repeat_kv pairs them) are folded into the query-length axis,
    query [R, H, q, D] -> [R, H_kv, G*q, D]      (a view for q = 1: every decode step)
so one SDPA call reads the shared K/V as stored, with a mask, on any backend. (transformers' sdpa path uses
native GQA only without a mask; with one it materialises K/V G times over the window.)

Sliding windows: a layer called with sliding_window w also hides the columns k <= c - w for a query at
cache column c (transformers' rule, kv_idx > q_idx - w over cache columns with the left padding counted), so
Gemma-2/3, Mistral and Phi-3 windows narrower than the cache are served exactly; when w >= W nothing can
fall outside it and no op runs. Soft-capped scores (Gemma-2: s -> cap * tanh(s / cap)) take the explicit
path eager attention takes. Anything else a layer asks for (attention sinks, ...) raises NotImplementedError,
which `unsupported_reason`'s probe turns into the reason the engine cannot run the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

NAME = "tokrl_sampler"
# Keyword arguments layers pass that do not change the attention math (position bookkeeping, output flags).
# Any other one that is set (not None or False) is refused rather than ignored.
_IGNORED = frozenset(
    {
        "position_ids",
        "cache_position",
        "output_attentions",
        "output_hidden_states",
        "output_router_logits",
        "use_cache",
        "is_causal",
        "layer_idx",
        "attention_type",
    }
)


class _QueryColumns:
    """The cache columns [q] of the current forward's queries, and that forward's sliding-window masks."""

    columns: torch.Tensor | None = None
    windowed: dict[tuple[int, int, int], torch.Tensor] = {}


_CURRENT = _QueryColumns()


@contextmanager
def query_columns(columns: torch.Tensor) -> Iterator[None]:
    """Tell the attention function where this forward's queries sit in the cache (columns [q] int64)."""
    _CURRENT.columns, _CURRENT.windowed = columns, {}
    try:
        yield
    finally:
        _CURRENT.columns, _CURRENT.windowed = None, {}


def _sliding_bias(bias: torch.Tensor, window: int) -> torch.Tensor:
    """bias [R, 1, q, W] with the columns k <= c_i - window also hidden for query i at column c_i; computed
    once per forward and window (every sliding layer of the forward shares it)."""
    key = (window, bias.data_ptr(), bias.shape[-1])
    if key not in _CURRENT.windowed:
        columns = _CURRENT.columns  # [q]
        if columns is None:
            raise RuntimeError("tokrl sampler attention ran outside the engine (no query columns)")
        keys = torch.arange(bias.shape[-1], device=bias.device)  # [W]
        inside = keys[None, :] > columns[:, None] - window  # [q, W]
        _CURRENT.windowed[key] = bias.masked_fill(~inside, torch.finfo(bias.dtype).min)  # [R, 1, q, W]
    return _CURRENT.windowed[key]


def sampler_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scaling + mask) v for query [R, H, q, D] over key/value [R, H_kv, W, D(v)]; returns
    [R, q, H, Dv] (the layout transformers' attention functions return) and no weights."""
    asked = sorted(
        name for name, given in kwargs.items() if given is not None and given is not False and name not in _IGNORED
    )
    if asked:
        raise NotImplementedError(f"the tokrl sampler's attention does not implement {', '.join(asked)}")
    if attention_mask is None or attention_mask.dim() != 4:
        raise NotImplementedError("the tokrl sampler's attention needs the engine's 4-D mask")
    rows, heads, q, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    bias = attention_mask[:, :, :, :width]  # [R, 1, q, W]
    if sliding_window is not None and sliding_window < width:
        bias = _sliding_bias(bias, sliding_window)
    folded = query.reshape(rows, kv_heads, groups * q, dim)  # [R, H_kv, G*q, D] (a view when q = 1)
    if q > 1:  # the prefill: each folded query row keeps its own mask row
        bias = bias[:, :, None].expand(rows, 1, groups, q, width).reshape(rows, 1, groups * q, width)
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            folded, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
        )  # [R, H_kv, G*q, Dv]
    else:
        scores = torch.matmul(folded, key.transpose(2, 3)) * (scaling if scaling is not None else dim**-0.5)
        scores = torch.tanh(scores / softcap) * softcap + bias  # [R, H_kv, G*q, W]
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)  # [R, H_kv, G*q, W]
        out = torch.matmul(weights, value)  # [R, H_kv, G*q, Dv]
    return out.view(rows, kv_heads, groups, q, -1).reshape(rows, heads, q, -1).transpose(1, 2), None


AttentionInterface.register(NAME, sampler_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # only read if a model builds its own mask (it gets ours)


@contextmanager
def engine_attention(body: torch.nn.Module) -> Iterator[None]:
    """Run `body`'s attention layers through `sampler_attention` inside the block (the config's attention
    implementation is restored after, also on error)."""
    config = body.config
    subconfigs = [name for name in getattr(config, "sub_configs", {}) if getattr(config, name, None) is not None]
    before = {"": config._attn_implementation}
    before.update({name: getattr(config, name)._attn_implementation for name in subconfigs})
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before  # the setter takes {"": own, sub-config name: its own}
