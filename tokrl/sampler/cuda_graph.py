"""CUDA-graph decode steps: one `decode_step` (forward of one token per row, sampling, bookkeeping) captured
per bucket and replayed, so a step costs one graph launch instead of thousands of kernel launches from Python.

Buckets: rows R = the next power of two >= B (at least 8) and cache columns C = L + n rounded up to a
multiple of CAPACITY_STEP, so a run captures a handful of graphs (one per (R, C, n, sampling options,
adapter state)), not one per step or per prompt length. Padding rows start done and only emit pad ids.

A graph reads and writes fixed addresses: each bucket keeps one DecodeState whose buffers (KV cache
included) every later call overwrites with its fresh prefill (`copy_from`) before replaying. Parameters
are read in place, so optimiser steps on the LoRA weights are seen by the next replay; a graph is keyed
on the adapter switches (peft's disable_adapter, active adapters, merged), train/eval mode and the head
weight's address, because a capture freezes Python branches taken inside the forward.

Randomness: warm-up and capture run under `torch.random.fork_rng`, so capturing draws nothing from the
caller's stream (a resumed run that captures at its first step samples what the uninterrupted run
replayed). Replays draw from the default CUDA generator's Philox state at replay time, advanced as eager
kernels would advance it, so `torch.manual_seed` before a call makes the rollout reproducible.
If capture fails (a model whose forward syncs with the host), the model falls back to eager decode steps
on the GPU with a warning; the samples are the same either way only in distribution.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokrl.sampler.engine import DecodeState, decode_step, decode_until_done, start_state
from tokrl.sampler.token_sampling import SamplingOptions

logger = logging.getLogger("tokrl")

CAPACITY_STEP = 128  # cache columns are allocated in multiples of this
MIN_ROWS = 8
CHECK_EVERY = 8  # decode steps between host checks of "every row is done" (each check is a sync)
WARMUP_STEPS = 2  # eager steps on a side stream before capture (cuBLAS handles, lazy inits)


@dataclass
class CapturedStep:
    state: DecodeState
    graph: torch.cuda.CUDAGraph


_CAPTURED: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, CapturedStep]] = weakref.WeakKeyDictionary()
_POOLS: weakref.WeakKeyDictionary[torch.nn.Module, object] = weakref.WeakKeyDictionary()
_EAGER_ONLY: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def row_bucket(batch: int) -> int:
    return max(MIN_ROWS, 1 << (batch - 1).bit_length())


def capacity_bucket(columns: int) -> int:
    return -(-columns // CAPACITY_STEP) * CAPACITY_STEP


def module_signature(body: torch.nn.Module) -> tuple:
    """What a capture freezes besides tensor addresses: train/eval, peft adapter switches, the head weight."""
    switches = tuple(
        (bool(getattr(m, "disable_adapters", False)), tuple(getattr(m, "active_adapters", ())), bool(m.merged))
        for m in body.modules()
        if hasattr(m, "merged") and hasattr(m, "active_adapters")
    )
    return body.training, switches, body.get_output_embeddings().weight.data_ptr()


def _capture(body: torch.nn.Module, state: DecodeState, options: SamplingOptions) -> torch.cuda.CUDAGraph:
    """Warm up on a side stream, capture one decode step, and restore every small buffer the warm-up moved.

    Cache columns the warm-up wrote lie beyond the restored column: each is rewritten by its own step
    before the step's bias makes it visible, so they need no restoring."""
    small = [state.cache.column, state.token, state.position, state.bias, state.tokens, state.logps]
    small += [state.step, state.done]
    saved = [t.clone() for t in small]
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.random.fork_rng(devices=[state.token.device]):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    decode_step(body, state, options)
            torch.cuda.current_stream().wait_stream(side)
            pool = _POOLS.setdefault(body, torch.cuda.graph_pool_handle())
            with torch.cuda.graph(graph, pool=pool):
                decode_step(body, state, options)
    finally:
        for buffer, value in zip(small, saved, strict=True):
            buffer.copy_(value)
    return graph


@torch.no_grad()
def run_graphed(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
) -> DecodeState:
    """The decode loop with captured steps (CUDA); returns the bucket's state (rows [:B] are the batch).

    The returned buffers belong to the bucket: read them before the next call."""
    batch = len(prompts) * num_generations
    width = max(len(p) for p in prompts)
    rows, capacity = row_bucket(batch), capacity_bucket(width + max_new_tokens)
    fresh = start_state(
        body, prompts, num_generations, max_new_tokens, options, eos_ids, pad_id, rows=rows, capacity=capacity
    )
    if body in _EAGER_ONLY:
        return _finish_eager(body, fresh, max_new_tokens, options)
    key = (rows, capacity, max_new_tokens, options, tuple(eos_ids), pad_id, module_signature(body))
    captured = _CAPTURED.setdefault(body, {})
    if key in captured:
        captured[key].state.copy_from(fresh)
        del fresh
    else:
        try:
            captured[key] = CapturedStep(fresh, _capture(body, fresh, options))
        except RuntimeError as err:
            logger.warning("CUDA-graph capture failed for %s (%s); decoding eagerly", type(body).__name__, err)
            _EAGER_ONLY.add(body)
            return _finish_eager(body, fresh, max_new_tokens, options)
    step = captured[key]
    return decode_until_done(step.state, max_new_tokens, CHECK_EVERY, step.graph.replay)


def _finish_eager(
    body: torch.nn.Module, state: DecodeState, max_new_tokens: int, options: SamplingOptions
) -> DecodeState:
    return decode_until_done(state, max_new_tokens, CHECK_EVERY, lambda: decode_step(body, state, options))
