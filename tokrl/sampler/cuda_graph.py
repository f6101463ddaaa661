"""Graphed decode steps: one `decode_step` (forward of one token per row, sampling, bookkeeping) captured per
(row bucket, attention window) and replayed, so a step costs one graph launch instead of thousands of kernel
launches from Python.

Buckets: rows R = the next power of two >= B (at least 8); attention windows W = multiples of WINDOW_STEP
(tokrl/sampler/state.py), so a 200-token rollout replays a handful of graphs, captured on the first call
that reaches them and kept for later calls (at most MAX_GRAPHS per model, least recently used dropped).
Padding rows start done and only emit pad ids. Every graph reads and writes the model's arena (one set of
buffers, views [:R]); when the arena grows, its release hook drops the graphs first.

Capture (`capture_step`): WARMUP_STEPS eager steps on a side stream, then the capture; the state's small
buffers are restored after each, so warm-up and capture write only the current step's token column and cache
column, which the real step then rewrites (for n = 2 the single decode step is step 1: nothing runs past the
buffers). The bookkeeping runs on any device through a `GraphBackend`: `CudaGraphs` on CUDA, and
`CallReplay` (replay = call the step again) with which tests check it on CPU.

Parameters are read in place, so optimiser steps on the LoRA weights (refreshed into the adapter copies at
every call) are seen by the next replay; a graph is keyed on the adapter switches (peft's disable_adapter,
active adapters, merged), train/eval mode and the head weight's address, because a capture freezes Python
branches taken inside the forward.

Randomness: warm-up and capture run under `torch.random.fork_rng`, so capturing draws nothing from the
caller's stream (a resumed run that captures at its first step samples what the uninterrupted run
replayed). Replays draw from the default CUDA generator's Philox state at replay time, advanced as eager
kernels would advance it, so `torch.manual_seed` before a call makes the rollout reproducible.

A failed capture (a forward that syncs with the host, an out-of-memory in warm-up) is not silent: those
steps run eagerly, a warning is logged every time, and `DecodeStats.graphed_share` (the trainer's per-step
`sampler_graphed` metric) drops below 1. The next call tries to capture again.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tokrl.sampler.adapters import WeightCopies, adapter_copies
from tokrl.sampler.engine import Overrides, decode_step, decode_until_done, start_state
from tokrl.sampler.state import Arena, DecodeState, arena_for
from tokrl.sampler.token_sampling import SamplingOptions

logger = logging.getLogger("tokrl")

MIN_ROWS = 8
CHECK_EVERY = 8  # decode steps between host checks of "every row is done" (each check is a sync)
WARMUP_STEPS = 2  # eager steps on a side stream before capture (cuBLAS handles, lazy inits)
MAX_GRAPHS = 32  # captured steps kept per model


class GraphBackend(Protocol):
    def side_stream(self) -> AbstractContextManager[None]: ...

    def capture(self, step: Callable[[], object]) -> Callable[[], object]:
        """Capture `step`; return what replays it."""
        ...


class CudaGraphs:
    """torch.cuda.CUDAGraph captures sharing one memory pool per model (steps never run concurrently).

    A pool lives only while one of its graphs does: once every graph was dropped (evicted, or cleared when the
    arena was released to grow), capturing into the old handle trips the caching allocator's `use_count > 0`
    assert, so a capture with no live graph opens a new pool."""

    def __init__(self) -> None:
        self.pool: tuple[int, int] | None = None
        self.live: weakref.WeakSet[torch.cuda.CUDAGraph] = weakref.WeakSet()  # the graphs holding `pool`

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, step: Callable[[], object]) -> Callable[[], object]:
        if not self.live:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step()
        self.live.add(graph)
        return graph.replay  # the bound method keeps `graph` (and so the pool) alive while it is kept


class CallReplay:
    """A device-free stand-in: `capture` runs the step once (as the warm-ups do) and replays by calling it."""

    def side_stream(self) -> AbstractContextManager[None]:
        return nullcontext()

    def capture(self, step: Callable[[], object]) -> Callable[[], object]:
        step()
        return step


def backend_for(device: torch.device) -> GraphBackend | None:
    """The graph backend the sampler uses on `device` (None: decode eagerly, as on CPU)."""
    return CudaGraphs() if device.type == "cuda" else None


@dataclass
class DecodeStats:
    """Decode steps replayed from a graph, run eagerly, and captures that failed."""

    graphed: int = 0
    eager: int = 0
    failed_captures: int = 0

    def add(self, other: DecodeStats) -> None:
        self.graphed, self.eager = self.graphed + other.graphed, self.eager + other.eager
        self.failed_captures += other.failed_captures

    @property
    def graphed_share(self) -> float | None:
        """Share of decode steps replayed from a graph (None when there were none)."""
        total = self.graphed + self.eager
        return self.graphed / total if total else None


def row_bucket(batch: int) -> int:
    return max(MIN_ROWS, 1 << (batch - 1).bit_length())


def module_signature(body: torch.nn.Module) -> tuple:
    """What a capture freezes besides tensor addresses: train/eval, peft adapter switches, the head weight."""
    switches = tuple(
        (bool(getattr(m, "disable_adapters", False)), tuple(getattr(m, "active_adapters", ())), bool(m.merged))
        for m in body.modules()
        if hasattr(m, "merged") and hasattr(m, "active_adapters")
    )
    return body.training, switches, body.get_output_embeddings().weight.data_ptr()


def capture_step(backend: GraphBackend, state: DecodeState, step: Callable[[], object]) -> Callable[[], object]:
    """Warm up and capture one decode step of `state`, leaving every small buffer as it was (module docstring)."""
    saved = [t.clone() for t in state.small_buffers()]

    def restore() -> None:
        for buffer, value in zip(state.small_buffers(), saved, strict=True):
            buffer.copy_(value)

    device = state.token.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            with backend.side_stream():
                for _ in range(WARMUP_STEPS):
                    step()
                    restore()
            return backend.capture(step)
        finally:
            restore()


@dataclass
class StepGraphs:
    """One model's captured decode steps, least recently used first, and the arena they read."""

    backend: GraphBackend
    arena: Arena
    replays: OrderedDict[tuple, Callable[[], object]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.arena.release_hooks.append(self.replays.clear)

    def step(
        self,
        body: torch.nn.Module,
        state: DecodeState,
        options: SamplingOptions,
        overrides: Overrides,
        key: tuple,
        stats: DecodeStats,
        failed: set[tuple],
    ) -> None:
        """One decode step of `state`: replayed (captured first when new), or eager where capture failed."""
        key = (*key, state.token.shape[0], state.cache.window)
        replay = self.replays.get(key)
        if replay is None and key not in failed:
            try:
                replay = capture_step(self.backend, state, lambda: decode_step(body, state, options, overrides))
            except RuntimeError as err:
                failed.add(key)
                stats.failed_captures += 1
                rows, window = key[-2:]
                logger.warning(
                    "tokrl sampler: CUDA-graph capture failed for %s at %d rows x %d columns (%s); these decode "
                    "steps run eagerly (sampler_graphed < 1)",
                    type(body).__name__,
                    rows,
                    window,
                    err,
                )
            else:
                self.replays[key] = replay
                while len(self.replays) > MAX_GRAPHS:
                    self.replays.popitem(last=False)
        if replay is None:
            decode_step(body, state, options, overrides)
            stats.eager += 1
        else:
            self.replays.move_to_end(key)
            replay()
            stats.graphed += 1


_GRAPHS: weakref.WeakKeyDictionary[torch.nn.Module, StepGraphs] = weakref.WeakKeyDictionary()


def graphs_for(body: torch.nn.Module, backend: GraphBackend) -> StepGraphs:
    """The captured steps kept for `body` (a backend of another kind starts afresh)."""
    graphs = _GRAPHS.get(body)
    if graphs is None or type(graphs.backend) is not type(backend):
        if graphs is not None:
            graphs.arena.release_hooks.remove(graphs.replays.clear)
        graphs = _GRAPHS[body] = StepGraphs(backend, arena_for(body))
    return graphs


@torch.no_grad()
def run_graphed(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
    backend: GraphBackend,
    weights: WeightCopies | None = None,
) -> tuple[DecodeState, DecodeStats]:
    """The decode loop with captured steps; returns the state (rows [:B] are the batch; the buffers belong
    to the model's arena: read them before the next call) and the call's DecodeStats. weights: what the
    forwards read instead of the model's parameters (default: `adapter_copies`)."""
    graphs = graphs_for(body, backend)
    adapters = weights if weights is not None else adapter_copies(body)
    rows = row_bucket(len(prompts) * num_generations)
    state = start_state(
        body,
        prompts,
        num_generations,
        max_new_tokens,
        options,
        eos_ids,
        pad_id,
        rows=rows,
        arena=graphs.arena,
        overrides=adapters.copies,
    )
    key = (options, tuple(eos_ids), pad_id, module_signature(body), adapters.version)
    stats, failed = DecodeStats(), set()
    decode_until_done(
        state,
        max_new_tokens,
        CHECK_EVERY,
        lambda: graphs.step(body, state, options, adapters.copies, key, stats, failed),
    )
    return state, stats
