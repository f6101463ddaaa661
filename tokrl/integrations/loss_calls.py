"""What computed the loss in `use_tokrl_kernels(mode="pg_loss")`: kernel calls and fallbacks, counted.

Every `_compute_loss` call is either one `linear_pg_loss` call or a fallback to TRL's loss. `record` counts it
(in total, per reason and per optimizer step), keeps `trainer.tokrl_kernels_path` saying what actually ran, and
appends to TRL's metrics:

    tokrl/loss_kernel_calls, tokrl/loss_fallbacks    each training call logs its indicator x the gradient-
                                                     accumulation steps; TRL averages a metric over the calls of
                                                     its logging window, so the logged value is the count per
                                                     optimizer step (in eval: the share of eval batches)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KERNEL_PATH = "tokrl_kernels.linear_pg_loss"
FALLBACK_PATH = "TRL's _compute_loss"
KERNEL_METRIC = "tokrl/loss_kernel_calls"
FALLBACK_METRIC = "tokrl/loss_fallbacks"


def fallback_path(reasons: list[str] | tuple[str, ...]) -> str:
    return f"{FALLBACK_PATH} (fallback: {'; '.join(reasons)})"


@dataclass
class LossCalls:
    """Counts of loss computations. per_step: optimizer step (1-based, training only) -> {"kernel", "fallback"}."""

    kernel: int = 0
    fallback: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    per_step: dict[int, dict[str, int]] = field(default_factory=dict)

    def add(self, reason: str | None, step: int | None) -> None:
        kind = "kernel" if reason is None else "fallback"
        setattr(self, kind, getattr(self, kind) + 1)
        if reason is not None:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if step is not None:
            counts = self.per_step.setdefault(step, {"kernel": 0, "fallback": 0})
            counts[kind] += 1

    def describe(self, planned: str) -> str:
        """What ran so far: `planned` (the path chosen at set-up) before any call."""
        if self.kernel == 0 and self.fallback == 0:
            return planned
        if self.fallback == 0:
            return KERNEL_PATH
        if self.kernel == 0:
            return fallback_path(list(self.reasons))
        reasons = "; ".join(self.reasons)
        return f"{KERNEL_PATH} ({self.kernel} calls) and {FALLBACK_PATH} ({self.fallback} fallbacks: {reasons})"


def start(trainer: Any, planned: str) -> None:
    """Attach an empty LossCalls and its entries in `trainer.tokrl_kernels_path` (set by use_tokrl_kernels)."""
    trainer.tokrl_loss_calls = LossCalls()
    trainer._tokrl_planned_loss = planned
    _publish(trainer)


def record(trainer: Any, reason: str | None) -> None:
    """Count one loss computation: the kernel (reason None) or a fallback for `reason`."""
    training = trainer.model.training
    calls: LossCalls = trainer.tokrl_loss_calls
    calls.add(reason, trainer.state.global_step + 1 if training else None)
    accumulation = (
        getattr(trainer, "current_gradient_accumulation_steps", 0) or trainer.args.gradient_accumulation_steps
    )
    weight = float(accumulation) if training else 1.0
    metrics = trainer._metrics["train" if training else "eval"]
    metrics[KERNEL_METRIC].append(weight * (reason is None))
    metrics[FALLBACK_METRIC].append(weight * (reason is not None))
    _publish(trainer)


def _publish(trainer: Any) -> None:
    calls: LossCalls = trainer.tokrl_loss_calls
    trainer.tokrl_kernels_path.update(
        loss=calls.describe(trainer._tokrl_planned_loss),
        loss_kernel_calls=calls.kernel,
        loss_fallbacks=calls.fallback,
        loss_calls_per_step=calls.per_step,
    )
