"""The decode state and the buffers it lives in, kept per model between sampler calls.

A decode step reads and writes only tensors at fixed addresses (a captured CUDA graph replays them), all
views of one `Arena` per model:
    keys, values   per layer [R_a, H_kv, C_a, D]     the decode KV cache
    bias           [R_a, 1, 1, C_a]                  additive mask: 0 visible, dtype-min hidden
    token, position [R_a, 1] int64; tokens [R_a, N_a] int64; logps [R_a, N_a] fp32; done [R_a] bool
    step 0-d int64 (the column of tokens to fill); column [1] int64 (the cache column to write)
A call with R rows, L prompt columns and n new tokens uses the views [:R] of these (C >= L + n - 1 columns,
N >= n). When a call needs more rows, columns or tokens than the arena holds, the old buffers are released
first (and the graphs that read them dropped, `release_hooks`), then larger ones allocated, rounded up so
growth is rare: one decode cache per model at any time, the largest call's, never a second per call.

Attention reads the first `window` columns only: for the query at column c, W = c + 1 rounded up to a
multiple of WINDOW_STEP when steps are replayed from graphs (so a 200-token rollout runs a handful of window
sizes, one graph each), W = c + 1 when decoding eagerly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tokrl.sampler.kv_cache import DecodeCache

WINDOW_STEP = 64  # attention windows (and arena columns) are multiples of this
TOKENS_STEP = 64  # arena token columns are multiples of this


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def window_for(column: int, capacity: int, step: int = WINDOW_STEP) -> int:
    """The columns attention reads for a query at cache column `column` (capacity: the arena's columns):
    column + 1 rounded up to `step` (WINDOW_STEP where captured graphs are reused across steps; an eager
    decode, with nothing to reuse, reads the filled columns only)."""
    return min(round_up(column + 1, step), capacity)


@dataclass
class DecodeState:
    """Views of the arena for one call (module docstring); `width` = L, the prompt columns; tokens and logps
    are N >= n columns wide, `new_tokens` / `new_logps` the call's n.

    Rows past the call's batch B are padding rows (CUDA-graph row buckets), done from the start."""

    cache: DecodeCache
    token: torch.Tensor
    position: torch.Tensor
    bias: torch.Tensor
    tokens: torch.Tensor
    logps: torch.Tensor
    step: torch.Tensor
    done: torch.Tensor
    eos: torch.Tensor
    pad: torch.Tensor
    width: int
    max_new_tokens: int

    @property
    def column(self) -> torch.Tensor:
        return self.cache.columns  # [1]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, : self.max_new_tokens]  # [R, n] (the buffer is wider: graphs outlive one n)

    @property
    def new_logps(self) -> torch.Tensor:
        return self.logps[:, : self.max_new_tokens]  # [R, n]

    def at_step(self, t: int) -> None:
        """Host bookkeeping before decode step t >= 1 (it feeds token t - 1 at column L + t - 1)."""
        column = self.width + t - 1
        self.cache.length = column
        self.cache.window = window_for(column, self.bias.shape[-1], 1 if self.cache.eager else WINDOW_STEP)

    def reveal_column(self) -> None:
        """Unmask the cache column this step writes (at the host's column when decoding eagerly)."""
        if self.cache.eager:
            self.bias.narrow(3, self.cache.length, 1).zero_()  # [R, 1, 1, 1]
        else:
            self.bias.index_fill_(3, self.column, 0.0)  # [R, 1, 1, C]

    def record(self, chosen: torch.Tensor, logp: torch.Tensor) -> None:
        """Store token `step` (chosen, logp [R]); done rows get the pad id; mark rows that chose an EOS."""
        chosen = torch.where(self.done, self.pad, chosen)  # [R]
        self.tokens.index_copy_(1, self.step.view(1), chosen[:, None])  # [R, N]
        self.logps.index_copy_(1, self.step.view(1), logp[:, None])  # [R, N]
        self.done.logical_or_((chosen[:, None] == self.eos[None, :]).any(-1))  # [R] (isin may sync on CUDA)
        self.token.copy_(chosen[:, None])  # [R, 1]
        self.step.add_(1)

    def small_buffers(self) -> list[torch.Tensor]:
        """What a step changes besides cache columns at or past `column` (a capture restores these)."""
        return [self.column, self.token, self.position, self.bias, self.tokens, self.logps, self.step, self.done]


@dataclass(frozen=True)
class Layout:
    """What a call needs: rows, cache columns, new tokens, per layer (H_kv, D_key, D_value), KV dtype, device."""

    rows: int
    columns: int
    new_tokens: int
    layers: tuple[tuple[int, int, int], ...]
    dtype: torch.dtype
    device: torch.device

    def covers(self, other: Layout) -> bool:
        if (self.layers, self.dtype, self.device) != (other.layers, other.dtype, other.device):
            return False
        return self.rows >= other.rows and self.columns >= other.columns and self.new_tokens >= other.new_tokens


@dataclass
class Arena:
    """One model's sampler buffers (module docstring). `allocations` counts (re)allocations."""

    layout: Layout | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    allocations: int = 0
    release_hooks: list[Callable[[], None]] = field(default_factory=list)
    eos: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)  # [E] per EOS set (fixed addresses)

    def reserve(self, need: Layout) -> None:
        """Make the buffers cover `need` (releasing the old ones first when they do not)."""
        if self.layout is not None and self.layout.covers(need):
            return
        if self.layout is not None and (self.layout.layers, self.layout.dtype) == (need.layers, need.dtype):
            need = Layout(
                max(need.rows, self.layout.rows),
                max(need.columns, self.layout.columns),
                max(need.new_tokens, self.layout.new_tokens),
                need.layers,
                need.dtype,
                need.device,
            )
        self.release()
        rows, columns = need.rows, round_up(need.columns, WINDOW_STEP)
        width, device = round_up(need.new_tokens, TOKENS_STEP), need.device
        self.keys = [torch.zeros(rows, h, columns, dk, dtype=need.dtype, device=device) for h, dk, _ in need.layers]
        self.values = [torch.zeros(rows, h, columns, dv, dtype=need.dtype, device=device) for h, _, dv in need.layers]
        self.buffers = {
            "token": torch.zeros(rows, 1, dtype=torch.int64, device=device),
            "position": torch.zeros(rows, 1, dtype=torch.int64, device=device),
            "bias": torch.zeros(rows, 1, 1, columns, dtype=need.dtype, device=device),
            "tokens": torch.zeros(rows, width, dtype=torch.int64, device=device),
            "logps": torch.zeros(rows, width, dtype=torch.float32, device=device),
            "step": torch.zeros((), dtype=torch.int64, device=device),
            "done": torch.zeros(rows, dtype=torch.bool, device=device),
            "column": torch.zeros(1, dtype=torch.int64, device=device),
            "pad": torch.zeros((), dtype=torch.int64, device=device),
        }
        self.layout = Layout(rows, columns, width, need.layers, need.dtype, device)
        self.allocations += 1

    def release(self) -> None:
        """Drop every buffer (and, first, whatever reads them)."""
        for hook in self.release_hooks:
            hook()
        self.keys, self.values, self.buffers, self.layout, self.eos = [], [], {}, None, {}

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def state(self, rows: int, width: int, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int) -> DecodeState:
        """Views [:rows] of the buffers as a DecodeState (values left as they are: the caller fills them)."""
        b = self.buffers
        b["pad"].fill_(pad_id)
        key = tuple(int(e) for e in eos_ids)
        if key not in self.eos:
            self.eos[key] = torch.as_tensor(key, dtype=torch.int64, device=b["pad"].device)  # [E]
        eos = self.eos[key]
        cache = DecodeCache([k[:rows] for k in self.keys], [v[:rows] for v in self.values], b["column"])
        return DecodeState(
            cache=cache,
            token=b["token"][:rows],
            position=b["position"][:rows],
            bias=b["bias"][:rows],
            tokens=b["tokens"][:rows],
            logps=b["logps"][:rows],
            step=b["step"],
            done=b["done"][:rows],
            eos=eos,
            pad=b["pad"],
            width=width,
            max_new_tokens=max_new_tokens,
        )


_ARENAS: weakref.WeakKeyDictionary[torch.nn.Module, Arena] = weakref.WeakKeyDictionary()


def arena_for(body: torch.nn.Module) -> Arena:
    """The arena the sampler keeps for `body` (created empty on first use, freed with the model)."""
    if body not in _ARENAS:
        _ARENAS[body] = Arena()
    return _ARENAS[body]
