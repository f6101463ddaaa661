"""Samplers by name: `sampler: auto | tokrl | hf` picks the object that turns prompts into completions.

A sampler continues P distinct prompts G times each and returns, per row (rows p*G .. p*G + G - 1 belong
to prompt p), the new token ids cut after the first EOS and, when it has them, their log-probs under
softmax(logits / T) (None otherwise). `auto` resolves per model and device (`resolve_sampler`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Protocol

import torch

from tokrl.infra.memory import free_memory_bytes
from tokrl.infra.registry import register_in, unknown_choice
from tokrl.sampler.token_sampling import SamplingOptions

SAMPLERS: dict[str, type] = {}
AUTO = "auto"
# `auto` samples a LoRA model merged (`tokrl-merged`: a decode layer runs the base model's ops, 34 instead of 62
# unmerged on the Qwen2-1.5B architecture, and a GPU's 32-row decode step is bound by its launches; on a CPU the
# tiny default samples ~10% faster) when the merged weight copies take at most this share of the free memory
# (the device's, or the system's on a CPU); otherwise unmerged (`tokrl`), which needs no copies.
MERGED_MAX_SHARE_OF_FREE = 0.25

logger = logging.getLogger("tokrl")
_FALLBACK_LOGGED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


class Sampler(Protocol):
    name: str
    graphed_share: float | None  # share of decode steps replayed from a CUDA graph (None: not applicable)

    def unsupported_reason(self, model: torch.nn.Module) -> str | None: ...

    def generate(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        *,
        num_generations: int,
        max_new_tokens: int,
        options: SamplingOptions,
        eos_ids: Sequence[int],
        pad_id: int,
    ) -> tuple[list[list[int]], list[list[float]] | None]: ...


def register_sampler(name: str):  # noqa: ANN201 (a class decorator)
    return register_in(SAMPLERS, "sampler", name)


def sampler_names() -> list[str]:
    """Every value the `sampler` option accepts."""
    return [AUTO, *sorted(SAMPLERS)]


def auto_choice(model: torch.nn.Module, free_bytes: int | None) -> str:
    """The engine `auto` tries first: `tokrl-merged` where it can serve the model and its copies fit
    MERGED_MAX_SHARE_OF_FREE of `free_bytes` (the memory free where the model lives; None: unknown), else `tokrl`."""
    merged = SAMPLERS.get("tokrl-merged")
    if free_bytes is not None and merged is not None and merged.merge_reason(model) is None:
        if merged.copy_bytes(model) <= MERGED_MAX_SHARE_OF_FREE * free_bytes:
            return "tokrl-merged"
    return "tokrl"


def resolve_sampler(name: str, model: torch.nn.Module) -> Sampler:
    """The sampler called `name` for `model`; `auto` = the tokrl engine wherever it supports the model
    (`auto_choice`: merged where the copies fit, else unmerged), else hf (saying why once per model). An
    explicit name the model cannot use raises ValueError."""
    if name != AUTO and name not in SAMPLERS:
        raise unknown_choice("sampler", name, sampler_names())
    if name == AUTO:
        preferred = SAMPLERS[auto_choice(model, free_memory_bytes(next(model.parameters()).device))]()
        reason = preferred.unsupported_reason(model)
        if reason is None:
            return preferred
        if model not in _FALLBACK_LOGGED:
            _FALLBACK_LOGGED.add(model)
            logger.warning(
                "sampler auto: %s cannot run %s (%s); sampling with hf", preferred.name, type(model).__name__, reason
            )
        return SAMPLERS["hf"]()
    sampler = SAMPLERS[name]()
    reason = sampler.unsupported_reason(model)
    if reason is not None:
        other = "auto" if name != "tokrl" else "hf"  # auto: the fastest sampler that can run the model
        raise ValueError(f"sampler: {name!r} cannot run {type(model).__name__}: {reason}; use --sampler {other}")
    return sampler
