"""The tokrl sampler's engine: prefill each distinct prompt once, copy its cache to its G rows, then decode
one token per step with sampling inside the step.

Shapes: P distinct prompts left-padded to L tokens; B = P * G rows (rows p*G .. p*G + G - 1 continue prompt
p); n = max_new_tokens; C >= L + n cache columns.

    prefill   model(prompts [P, L], positions over real tokens, causal + padding mask) -> cache [P, .., L],
              logits of the last column [P, V] (logits_to_keep=1: no [P, L, V] tensor)
    copy      decode cache rows [B] <- prefill rows p // G, columns [0, L); logits [B, V] likewise
    token 0   choose_tokens(logits [B, V])
    step t>=1 input token t-1 at column L + t - 1, position len_b + t - 1 -> logits [B, V] -> token t
Rows that emitted an EOS are done: their later tokens are the pad id (generate does the same) and are cut
with the EOS-terminated completion. The loop exits once every row is done (checked on the host every
`check_every` steps) or after n tokens. Positions count real tokens only (the first real token is position
0, as in generate), so a left-padded row decodes exactly like the unpadded prompt.

The model runs through its own forward (any transformers causal LM with eager or sdpa attention and no
sliding-window layers; a peft model runs its LoRA layers unmerged, the base weights untouched). The mask
is passed prebuilt as an additive [rows, 1, q, C] bias (0 visible, dtype-min hidden) in transformers'
per-layer-type dict, so no mask is built from the cache and nothing in a step syncs with the host.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tokrl.sampler.kv_cache import StaticKVCache
from tokrl.sampler.rows import left_pad
from tokrl.sampler.token_sampling import SamplingOptions, choose_tokens

SUPPORTED_ATTENTION = ("eager", "sdpa")


def model_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model to call: inside a peft model, the base model (LoRA layers injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the engine cannot run `model` (None when it can)."""
    body = model_body(model)
    config = getattr(body, "config", None)
    if config is None or not hasattr(body, "get_output_embeddings"):
        return f"{type(body).__name__} is not a transformers causal LM"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} (supported: {', '.join(SUPPORTED_ATTENTION)})"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)} (only full attention layers are supported, no sliding windows)"
    if "position_ids" not in inspect.signature(body.forward).parameters:
        return f"{type(body).__name__}.forward takes no position_ids"
    return None


@functools.cache
def _forward_names(model_class: type) -> tuple[str, bool]:
    """(the forward's cache argument, whether it takes cache_position): transformers >= 5.2x calls the cache
    `cache` and has no cache_position; earlier 5.x releases use `past_key_values` and, without an explicit
    cache_position, would ask the cache for its length (a host sync, fatal inside a CUDA-graph capture)."""
    parameters = inspect.signature(model_class.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "cache_position" in parameters


def forward_logits(
    body: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, cache: StaticKVCache
) -> torch.Tensor:
    """Logits of the last input column [rows, V] for ids/positions [rows, q] and bias [rows, 1, q, C]."""
    cache_name, takes_cache_position = _forward_names(type(body))
    extra = {cache_name: cache}
    if takes_cache_position:
        extra["cache_position"] = cache.column + torch.arange(ids.shape[1], device=ids.device)  # [q]
    out = body(
        input_ids=ids, position_ids=positions, attention_mask={"full_attention": bias}, use_cache=True,
        logits_to_keep=1, **extra,
    )  # fmt: skip
    return out.logits[:, -1]  # [rows, V]


def hidden_bias(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias from a boolean visibility mask: 0 where visible, the dtype's min elsewhere
    (not -inf: a fully hidden pad row then averages zeros instead of producing NaN)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


@torch.no_grad()
def prefill(body: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[StaticKVCache, torch.Tensor]:
    """Run the left-padded prompts ids/mask [P, L] once: (their cache, L columns; last logits [P, V])."""
    width = ids.shape[1]
    dtype = body.get_output_embeddings().weight.dtype
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [P, L] real tokens only, as generate counts them
    causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()  # [L, L]
    visible = causal[None] & mask.bool()[:, None, :]  # [P, L, L]: earlier real tokens only
    cache = StaticKVCache(width, ids.device)
    logits = forward_logits(body, ids, positions, hidden_bias(visible[:, None], dtype), cache)  # [P, V]
    cache.advance(width)
    return cache, logits


@dataclass
class DecodeState:
    """Every tensor one decode step reads and writes in place (fixed addresses: a CUDA graph replays them).

    token [R, 1] the last chosen token (the next input); position [R, 1] its position; bias [R, 1, 1, C];
    tokens [R, n] int64 and logps [R, n] fp32 outputs; step 0-d int64 (the column of tokens to fill);
    done [R] bool; eos [E] int64; pad 0-d int64. R >= B: rows past B are padding rows, done from the start.
    """

    cache: StaticKVCache
    token: torch.Tensor
    position: torch.Tensor
    bias: torch.Tensor
    tokens: torch.Tensor
    logps: torch.Tensor
    step: torch.Tensor
    done: torch.Tensor
    eos: torch.Tensor
    pad: torch.Tensor

    def record(self, chosen: torch.Tensor, logp: torch.Tensor) -> None:
        """Store token `step` (chosen, logp [R]); done rows get the pad id; mark rows that chose an EOS."""
        chosen = torch.where(self.done, self.pad, chosen)  # [R]
        self.tokens.index_copy_(1, self.step.view(1), chosen[:, None])  # [R, n]
        self.logps.index_copy_(1, self.step.view(1), logp[:, None])  # [R, n]
        self.done.logical_or_((chosen[:, None] == self.eos[None, :]).any(-1))  # [R] (isin may sync on CUDA)
        self.token.copy_(chosen[:, None])  # [R, 1]
        self.step.add_(1)

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer a step reads or writes (cache layers included), in a fixed order."""
        return [
            *self.cache.keys, *self.cache.values, self.cache.column, self.token, self.position, self.bias,
            self.tokens, self.logps, self.step, self.done, self.eos, self.pad,
        ]  # fmt: skip

    def copy_from(self, other: DecodeState) -> None:
        """Load `other`'s values into this state's buffers (same shapes), keeping this state's addresses."""
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.copy_(theirs)


def decode_step(body: torch.nn.Module, state: DecodeState, options: SamplingOptions) -> torch.Tensor:
    """One token for every row, entirely on the device (this is what a CUDA graph captures); returns the
    step's logits [R, V] (the model's dtype)."""
    state.bias.index_fill_(3, state.cache.column.view(1), 0.0)  # the column written now becomes visible
    logits = forward_logits(body, state.token, state.position, state.bias, state.cache)  # [R, V]
    state.cache.advance(1)
    state.position.add_(1)
    state.record(*choose_tokens(logits, options))
    return logits


def start_state(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
    rows: int | None = None,
    capacity: int | None = None,
) -> DecodeState:
    """Prefill the prompts, copy each one's cache to its G rows and choose token 0 (see the module docstring).

    rows / capacity: allocate R >= B rows and C >= L + n columns (the CUDA-graph path buckets both).
    """
    head = body.get_output_embeddings().weight  # [V, D]
    device, dtype = head.device, head.dtype
    ids, mask = left_pad(prompts, pad_id, device)  # [P, L], [P, L]
    width, batch = ids.shape[1], len(prompts) * num_generations
    rows, capacity = rows or batch, capacity or width + max_new_tokens
    source = torch.arange(len(prompts), device=device).repeat_interleave(num_generations)  # [B] prompt of each row
    prompt_cache, logits = prefill(body, ids, mask)  # [P, .., L], [P, V]
    cache = StaticKVCache(capacity, device)
    cache.allocate_like(prompt_cache, rows)
    cache.copy_rows_from(prompt_cache, source)
    del prompt_cache
    visible = torch.zeros(rows, capacity, dtype=torch.bool, device=device)  # [R, C]
    visible[:batch, :width] = mask.bool()[source]  # [B, L]
    lengths = torch.zeros(rows, dtype=torch.int64, device=device)  # [R]
    lengths[:batch] = mask.sum(-1)[source]  # [B] real prompt tokens of each row
    state = DecodeState(
        cache=cache,
        token=torch.full((rows, 1), pad_id, dtype=torch.int64, device=device),
        position=lengths[:, None].clone(),  # [R, 1] the position of token 0 when it is fed back
        bias=hidden_bias(visible[:, None, None, :], dtype),  # [R, 1, 1, C]
        tokens=torch.full((rows, max_new_tokens), pad_id, dtype=torch.int64, device=device),
        logps=torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device),
        step=torch.zeros((), dtype=torch.int64, device=device),
        done=torch.arange(rows, device=device) >= batch,  # [R] padding rows are done from the start
        eos=torch.as_tensor(list(eos_ids), dtype=torch.int64, device=device),
        pad=torch.tensor(pad_id, dtype=torch.int64, device=device),
    )
    first = torch.zeros(rows, logits.shape[-1], dtype=torch.float32, device=device)  # [R, V]
    first[:batch] = logits[source].float()  # [B, V]
    state.record(*choose_tokens(first, options))
    return state


@torch.no_grad()
def run_eager(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
    check_every: int = 1,
) -> DecodeState:
    """The whole decode loop, step by step in eager mode; returns the final state (tokens [B, n])."""
    state = start_state(body, prompts, num_generations, max_new_tokens, options, eos_ids, pad_id)
    return decode_until_done(state, max_new_tokens, check_every, lambda: decode_step(body, state, options))


def decode_until_done(
    state: DecodeState, max_new_tokens: int, check_every: int, step: Callable[[], object]
) -> DecodeState:
    """Run `step` (one decode step writing into `state`) for tokens 1 .. n - 1, leaving early once every row
    is done; the host looks at `state.done` only every `check_every` steps (each look is a device sync)."""
    for t in range(1, max_new_tokens):
        if t % check_every == 0 and bool(state.done.all()):
            break
        step()
    return state
