"""What a finished (or stopped) run returns, `TrainResult`, and the `results.json` that holds the same numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokrl.config.schema import TrainConfig
from tokrl.infra.atomic import write_text_atomic
from tokrl.run.run_dir import RESULTS_FILE


@dataclass
class TrainResult:
    """What `train` returns; `results.json` in `output_dir` holds the same numbers."""

    eval_before: float | None
    eval_after: float | None
    steps: int
    output_dir: Path
    interrupted: bool = False
    wall_time_s: float = 0.0
    checkpoint: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def write_results(
    result: TrainResult, config: TrainConfig, task_options: dict[str, Any], evals: list[dict[str, Any]]
) -> None:
    """`results.json` of `result` (written atomically): the run's names, accuracies, steps, wall time and
    checkpoint; `evals` is the run's evaluation history (the last one gives eval_n)."""
    data = {
        "algorithm": config.algorithm,
        "task": config.task,
        "task_options": task_options,
        "model": config.model,
        "steps": result.steps,
        "eval_before": result.eval_before,
        "eval_after": result.eval_after,
        "eval_n": evals[-1]["n"] if evals else None,
        "interrupted": result.interrupted,
        "wall_time_s": result.wall_time_s,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }
    write_text_atomic(result.output_dir / RESULTS_FILE, json.dumps(data, indent=2))
