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

from tokrl.registry import register_in
from tokrl.sampler.token_sampling import SamplingOptions

SAMPLERS: dict[str, type] = {}
AUTO = "auto"
# What `auto` picks on a CPU for a model both can run: the tiny model measured tokrl at least as fast as HF
# generate here (benchmarks/test_generate.py, benchmarks/NOTES.md "Sampler"). CUDA always takes tokrl.
AUTO_ON_CPU = "tokrl"

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


def resolve_sampler(name: str, model: torch.nn.Module) -> Sampler:
    """The sampler called `name` for `model`; `auto` = tokrl on CUDA (and on CPU per AUTO_ON_CPU) wherever
    the tokrl engine supports the model, else hf (saying why once per model). An explicit name the model
    cannot use raises ValueError."""
    if name != AUTO and name not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(sampler_names())}, got {name!r}")
    if name == AUTO:
        device = next(model.parameters()).device
        preferred = SAMPLERS["tokrl" if device.type == "cuda" else AUTO_ON_CPU]()
        reason = preferred.unsupported_reason(model)
        if reason is None:
            return preferred
        if model not in _FALLBACK_LOGGED:
            _FALLBACK_LOGGED.add(model)
            logger.warning("sampler auto: %s cannot run %s (%s); sampling with hf", preferred.name,
                           type(model).__name__, reason)  # fmt: skip
        return SAMPLERS["hf"]()
    sampler = SAMPLERS[name]()
    reason = sampler.unsupported_reason(model)
    if reason is not None:
        other = "auto" if name != "tokrl" else "hf"  # auto: the fastest sampler that can run the model
        raise ValueError(f"sampler: {name!r} cannot run {type(model).__name__}: {reason}; use --sampler {other}")
    return sampler
