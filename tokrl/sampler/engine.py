"""The tokrl sampler's engine: prefill each distinct prompt once, copy its cache to its G rows, then decode
one token per step with sampling inside the step.

Shapes: P distinct prompts left-padded to L tokens; B = P * G rows (rows p*G .. p*G + G - 1 continue prompt
p); R >= B rows decoded (CUDA-graph row buckets add padding rows, done from the start); n = max_new_tokens.

    prefill   model(prompts [P, L], positions over real tokens, causal + padding mask) -> prompt cache
              [P, .., L] (kept as computed), logits of the last column [P, V] (logits_to_keep=1)
    copy      decode cache rows [B] <- prompt rows p // G, columns [0, L) (tokrl/sampler/state.py's arena)
    token 0   choose_tokens(logits [B, V])
    step t>=1 input token t-1 at cache column L + t - 1, position len_b + t - 1 -> logits [R, V] -> token t
Rows that emitted an EOS are done: their later tokens are the pad id (generate does the same) and are cut
with the EOS-terminated completion. The loop exits once every row is done (checked on the host every
`check_every` steps) or after n tokens. Positions count real tokens only (the first real token is position
0, as in generate), so a left-padded row decodes exactly like the unpadded prompt.

The model runs through its own forward: any transformers causal LM whose attention layers look their
attention function up by name (tokrl/sampler/attention.py swaps in the engine's for the forward), reading
the engine's Cache (tokrl/sampler/kv_cache.py), a prebuilt additive 4-D mask [rows, 1, q, C] (0 visible,
dtype-min hidden) and explicit positions, so nothing in a step syncs with the host. A peft model runs its
LoRA layers unmerged, with adapter copies in the model's dtype (tokrl/sampler/adapters.py), or with them
merged into copies of the base weights (`tokrl-merged`, tokrl/sampler/merged.py): the forwards read the
copies through `torch.func.functional_call`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch

from tokrl.models.forward import additive_mask
from tokrl.sampler.adapters import WeightCopies, adapter_copies
from tokrl.sampler.attention import engine_attention, query_columns
from tokrl.sampler.kv_cache import DecodeCache, PromptCache
from tokrl.sampler.rows import left_pad
from tokrl.sampler.state import Arena, DecodeState, Layout
from tokrl.sampler.token_sampling import SamplingOptions, choose_tokens

Overrides = dict[str, torch.Tensor]  # parameter name -> the tensor the forward reads instead


@functools.cache
def forward_names(model_class: type) -> tuple[str, bool]:
    """(the forward's cache argument, whether it takes cache_position): transformers >= 5.2x calls the cache
    `cache` and has no cache_position; earlier 5.x releases use `past_key_values` and, for some models,
    without an explicit cache_position would ask the cache for its length."""
    parameters = inspect.signature(model_class.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "cache_position" in parameters


def forward_logits(
    body: torch.nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor,
    cache: PromptCache | DecodeCache,
    overrides: Overrides | None = None,
) -> torch.Tensor:
    """Logits of the last input column [rows, V] for ids/positions [rows, q], bias [rows, 1, q, W] and the
    cache (which knows the columns [q] the inputs occupy)."""
    cache_name, takes_cache_position = forward_names(type(body))
    kwargs = {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": bias,
        "use_cache": True,
        "logits_to_keep": 1,
        cache_name: cache,
    }
    if takes_cache_position:
        kwargs["cache_position"] = cache.columns  # [q]
    with engine_attention(body), query_columns(cache.columns):
        if overrides:
            # tie_weights=False: an override replaces that name only. The overrides (adapter copies, merged
            # projection weights) are tied to nothing else that should change (a merged LoRA head must not
            # replace the tied input embedding), and the untying walk cost ~0.5 ms per forward on the tiny model.
            out = torch.func.functional_call(body, overrides, (), kwargs, strict=False, tie_weights=False)
        else:
            out = body(**kwargs)
    return out.logits[:, -1]  # [rows, V]


@torch.no_grad()
def prefill(
    body: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, overrides: Overrides | None = None
) -> tuple[PromptCache, torch.Tensor]:
    """Run the left-padded prompts ids/mask [P, L] once: (their cache, L columns; last logits [P, V])."""
    width = ids.shape[1]
    dtype = body.get_input_embeddings().weight.dtype
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [P, L] real tokens only, as generate counts them
    causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()  # [L, L]
    visible = causal[None] & mask.bool()[:, None, :]  # [P, L, L]: earlier real tokens only
    cache = PromptCache(width, ids.device)
    logits = forward_logits(body, ids, positions, additive_mask(visible[:, None], dtype), cache, overrides)  # [P, V]
    cache.length = width
    return cache, logits


@torch.no_grad()
def decode_step(
    body: torch.nn.Module, state: DecodeState, options: SamplingOptions, overrides: Overrides | None = None
) -> torch.Tensor:
    """One token for every row, entirely on the device (what a CUDA graph captures); `state.at_step` has set
    the host bookkeeping. Returns the step's logits [R, V] (the model's dtype)."""
    state.reveal_column()
    bias = state.bias[..., : state.cache.window]  # [R, 1, 1, W]
    logits = forward_logits(body, state.token, state.position, bias, state.cache, overrides)  # [R, V]
    state.column.add_(1)
    state.position.add_(1)
    state.record(*choose_tokens(logits, options))
    return logits


@torch.no_grad()
def start_state(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
    rows: int | None = None,
    arena: Arena | None = None,
    overrides: Overrides | None = None,
) -> DecodeState:
    """Prefill the prompts, copy each one's cache to its G rows of `arena` (a fresh one when None) and
    choose token 0 (see the module docstring). rows: decode R >= B rows (the CUDA-graph path buckets them)."""
    ids, mask = left_pad(prompts, pad_id, body.get_output_embeddings().weight.device)  # [P, L], [P, L]
    device, (width, batch) = ids.device, (ids.shape[1], len(prompts) * num_generations)
    rows = rows or batch
    prompt_cache, logits = prefill(body, ids, mask, overrides)  # [P, .., L], [P, V]
    kv_dtype = prompt_cache.layers[0].keys.dtype
    arena = arena if arena is not None else Arena()
    need = Layout(rows, width + max_new_tokens - 1, max_new_tokens, tuple(prompt_cache.shapes()), kv_dtype, device)
    arena.reserve(need)
    state = arena.state(rows, width, max_new_tokens, eos_ids, pad_id)
    source = torch.arange(len(prompts), device=device).repeat_interleave(num_generations)  # [B] prompt of each row
    state.cache.load_prompts(prompt_cache, source)
    del prompt_cache
    visible = torch.zeros(rows, state.bias.shape[-1], dtype=torch.bool, device=device)  # [R, C]
    visible[:batch, :width] = mask.bool()[source]  # [B, L]
    state.bias.copy_(additive_mask(visible[:, None, None, :], kv_dtype))  # [R, 1, 1, C]
    lengths = torch.zeros(rows, dtype=torch.int64, device=device)  # [R]
    lengths[:batch] = mask.sum(-1)[source]  # [B] real prompt tokens of each row
    state.position.copy_(lengths[:, None])  # [R, 1] the position of token 0 when it is fed back
    state.token.fill_(pad_id)
    state.tokens.fill_(pad_id)
    state.logps.zero_()
    state.step.zero_()
    state.done.copy_(torch.arange(rows, device=device) >= batch)  # [R] padding rows are done from the start
    state.column.fill_(width)
    first = torch.zeros(rows, logits.shape[-1], dtype=torch.float32, device=device)  # [R, V]
    first[:batch] = logits[source].float()  # [B, V]
    state.record(*choose_tokens(first, options))
    return state


def decode_until_done(state: DecodeState, max_new_tokens: int, check_every: int, step: Callable[[], object]) -> int:
    """Run `step` (one decode step writing into `state`) for tokens 1 .. n - 1, leaving early once every row
    is done; the host looks at `state.done` only every `check_every` steps (each look is a device sync).
    Returns the number of steps run."""
    ran = 0
    for t in range(1, max_new_tokens):
        if t % check_every == 0 and bool(state.done.all()):
            break
        state.at_step(t)
        step()
        ran += 1
    return ran


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
    arena: Arena | None = None,
    weights: WeightCopies | None = None,
) -> DecodeState:
    """The whole decode loop, step by step in eager mode, every row in every step (the steps a graph replays);
    returns the final state (`new_tokens` [B, n]). The sampler's eager path is tokrl/sampler/prefix_decode.py,
    which forwards each distinct prefix once; this loop serves the support probe and the tests that compare the
    two. weights: what the forwards read instead of the model's parameters (default: `adapter_copies`)."""
    overrides = (weights if weights is not None else adapter_copies(body)).copies
    state = start_state(
        body, prompts, num_generations, max_new_tokens, options, eos_ids, pad_id, arena=arena, overrides=overrides
    )
    state.cache.eager = True  # no graph replays these steps (`DecodeCache.eager`)
    decode_until_done(state, max_new_tokens, check_every, lambda: decode_step(body, state, options, overrides))
    return state
