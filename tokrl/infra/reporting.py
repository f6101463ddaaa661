"""Metric reporters: every train and eval record that MetricsLog writes to metrics.jsonl also goes to them.

metrics.jsonl stays the source of truth; reporters are views for people watching a run. A record is the
cleaned dict MetricsLog wrote (`step`, `kind` "train" | "eval", numbers, None for non-finite values). Each
number becomes a scalar tagged "<kind>/<key>" (train/reward_mean, eval/accuracy) at global step `step`;
strings (eval's `when`) and None values are left out.

Backends live in a registry (`@register_reporter("tensorboard")`), chosen by the `report_to` config field;
"none" selects no reporter. Only rank 0 builds reporters (the others write no metrics at all).

Resume semantics follow metrics.jsonl: resume_step 0 is a fresh run; resume_step s > 0 continues after
checkpoint-s, so the records an interrupted process wrote at steps > s are stale and must not show twice.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tokrl.infra.atomic import write_text_atomic
from tokrl.infra.extras import import_extra
from tokrl.infra.registry import register_in

logger = logging.getLogger("tokrl")

NO_REPORTER = "none"
TENSORBOARD_DIR = "tensorboard"
WANDB_RUN_ID_FILE = "wandb_run_id"


class Reporter(ABC):
    """One backend. `extra` is the pip extra (`tokrl[extra]`) and `package` the module it needs."""

    name: str
    extra: str
    package: str

    def __init__(self, output_dir: Path, *, config: Mapping[str, Any], resume_step: int) -> None:
        self.output_dir = Path(output_dir)

    @abstractmethod
    def log(self, record: Mapping[str, Any]) -> None:
        """Send one cleaned metrics record."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the backend."""

    @classmethod
    def require(cls) -> Any:
        """The backend's package, or MissingExtraError naming the extra."""
        return import_extra(cls.package, extra=cls.extra, feature=f"report_to: {cls.name!r}")


REPORTERS: dict[str, type[Reporter]] = {}


def register_reporter(name: str) -> Callable[[type[Reporter]], type[Reporter]]:
    """Class decorator: `@register_reporter("tensorboard")` makes the backend selectable in `report_to`."""
    return register_in(REPORTERS, "reporter", name)


def available_reporters() -> list[str]:
    """Valid `report_to` values: "none" and every registered backend."""
    return [NO_REPORTER, *sorted(REPORTERS)]


def _selected(names: Sequence[str]) -> list[type[Reporter]]:
    return [REPORTERS[name] for name in dict.fromkeys(names) if name != NO_REPORTER]


def check_reporters(names: Sequence[str]) -> None:
    """Fail before any weights load when a selected backend's package is missing (MissingExtraError)."""
    for cls in _selected(names):
        cls.require()


def build_reporters(
    names: Sequence[str], output_dir: Path, *, config: Mapping[str, Any], resume_step: int
) -> list[Reporter]:
    """The selected backends, each opened for `output_dir` (names already validated by validate_config)."""
    return [cls(Path(output_dir), config=config, resume_step=resume_step) for cls in _selected(names)]


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """{"<kind>/<key>": value} for the finite numbers of a record (not `step` itself, not booleans)."""
    kind = record.get("kind", "train")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in ("step", "kind")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


@register_reporter("tensorboard")
class TensorBoardReporter(Reporter):
    """Scalars in event files under output_dir/tensorboard/ (torch.utils.tensorboard's SummaryWriter).

    Fresh run: event files of an earlier run in that folder are removed (metrics.jsonl is rewritten too).
    Resumed from checkpoint-s: a new event file in the same folder opens with a restart marker at step s + 1
    (SummaryWriter's purge_step), so TensorBoard hides the earlier process's events at steps > s, exactly
    the records metrics.jsonl dropped, and no step shows twice. Each record is flushed at once, so the event
    files keep up with metrics.jsonl even if the process dies.
    """

    extra = "tensorboard"
    package = "tensorboard"

    def __init__(self, output_dir: Path, *, config: Mapping[str, Any], resume_step: int) -> None:
        super().__init__(output_dir, config=config, resume_step=resume_step)
        self.require()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = self.output_dir / TENSORBOARD_DIR
        if resume_step == 0:
            for stale in sorted(self.log_dir.glob("events.out.tfevents.*")):
                logger.warning("removing %s from an earlier run (pass --resume to continue it instead)", stale)
                stale.unlink()
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=resume_step + 1 if resume_step else None)
        if resume_step == 0:
            text = yaml.safe_dump(dict(config), sort_keys=False)
            self._writer.add_text("config", "```\n" + text + "```", global_step=0)

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


@register_reporter("wandb")
class WandbReporter(Reporter):
    """A Weights & Biases run stored under output_dir/wandb/.

    wandb reads its own environment: WANDB_MODE=offline (or disabled) is respected, WANDB_PROJECT names the
    project (default "tokrl"), WANDB_ENTITY the team. The run id is kept in output_dir/wandb_run_id so a
    resumed run continues the same wandb run (resume="allow"). wandb's steps only move forward: records an
    interrupted process sent at steps > s before it died stay in wandb as sent (wandb drops the resumed
    process's records at steps it has already seen, with a warning); metrics.jsonl and TensorBoard hold
    exactly the records of the resumed run.
    """

    extra = "wandb"
    package = "wandb"

    def __init__(self, output_dir: Path, *, config: Mapping[str, Any], resume_step: int) -> None:
        super().__init__(output_dir, config=config, resume_step=resume_step)
        wandb = self.require()
        id_file = self.output_dir / WANDB_RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume_step and id_file.is_file() else uuid.uuid4().hex[:12]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(id_file, run_id + "\n")
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tokrl"),
            name=self.output_dir.name,
            id=run_id,
            resume="allow",
            dir=str(self.output_dir),
            config=dict(config),
        )

    def log(self, record: Mapping[str, Any]) -> None:
        self._run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()
