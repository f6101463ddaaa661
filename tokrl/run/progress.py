"""Watching a run's steps for a run that learns nothing: a warning for a step whose rewards were all None, and
`StalledRunError` once `max_empty_steps` steps in a row selected no token."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("tokrl")


class StalledRunError(RuntimeError):
    """The run trained nothing for `max_empty_steps` steps in a row."""


class StallWatch:
    """Counts the steps in a row without a selected token (every rank sees the same global counts, so all stop
    together). `limit`: max_empty_steps (0 = never stop); `reward_name` names the reward in the warning."""

    def __init__(self, limit: int, reward_name: str) -> None:
        self.limit, self.reward_name, self.empty_steps = limit, reward_name, 0

    def check(self, step: int, record: dict[str, Any]) -> None:
        """After step `step` (1-based) with metrics `record`: warn or raise StalledRunError (module doc)."""
        if record.get("reward_mean") is None or record["reward_mean"] != record["reward_mean"]:  # None or NaN
            logger.warning(
                "step %d: the reward function %r returned None for every completion; nothing to learn from",
                step,
                self.reward_name,
            )
        self.empty_steps = self.empty_steps + 1 if record.get("selected_tokens") == 0 else 0
        if self.limit and self.empty_steps >= self.limit:
            raise StalledRunError(
                f"no trainable token in the last {self.empty_steps} steps (selected_tokens == 0 up to step "
                f"{step}): every group had equal rewards or nothing was selected, so the run would train "
                "nothing; check the reward function and max_tokens, or raise --max-empty-steps (0 = never stop)"
            )
