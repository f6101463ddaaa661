"""The output directory of a run: what may be written there, and when an earlier run may be removed.

`plan_run` is called before anything is loaded or written (and again once the run holds the directory's
lock, tokrl.run.run_lock); it decides (and checks) everything, deletes nothing:
- output_dir must be a directory (or not exist yet) that this process can write;
- resume: the checkpoint to continue (tokrl.run.resume: a complete one, or an error), the config check
  against it, `steps` against its step and schedule, and the run's metrics.jsonl (every line a record);
- --overwrite together with --resume is refused, except for a checkpoint of *another* run directory:
  that continues the other run here, replacing what this directory holds;
- a directory holding another run (a checkpoint, metrics.jsonl or results.json) is refused unless
  `overwrite`, both for a new run and for a run continued from another directory's checkpoint.
`RunPlan.clear_earlier_run` is called once the new run has started (model, LoRA and optimiser built):
it commits a warm start rebuilt under --overwrite, removes leftover temporary files of killed writes and,
when replacing, the earlier run's checkpoints, metrics and results. Resuming a checkpoint older than the
directory's newest moves the newer ones (a branch the resumed run replaces), with the run's metrics.jsonl
and results.json as they were, into `superseded-N/`: nothing is deleted, and the directory holds one
history again.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokrl.config.schema import TrainConfig
from tokrl.infra.atomic import TEMP_FILE_PREFIX, fsync_dir
from tokrl.infra.reporting import TENSORBOARD_DIR, WANDB_RUN_ID_FILE
from tokrl.run.checkpoint import CHECKPOINT_RE, checkpoint_dirs
from tokrl.run.metrics_log import read_metrics_lines
from tokrl.run.resume import (
    check_resume_config,
    check_resume_steps,
    checkpoint_config,
    checkpoint_step,
    checkpoint_to_resume,
)
from tokrl.run.warm_start import SFT_DIR

logger = logging.getLogger("tokrl")

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
RUN_FILES = (METRICS_FILE, RESULTS_FILE)
TEMP_PREFIXES = (".checkpoint-", ".stale-checkpoint-", ".sft.")
SUPERSEDED_PREFIX = "superseded-"


@dataclass
class RunPlan:
    """What setup will do in output_dir: resume `checkpoint` (None = start at step 0) at `step`, whether the
    earlier run's files go once the new run has started, and the newer checkpoints a resume supersedes."""

    output_dir: Path
    checkpoint: Path | None = None
    replace_earlier_run: bool = False
    changes: list[str] = field(default_factory=list)
    step: int = 0
    source_run: Path | None = None  # the run directory of a checkpoint that lives in another directory
    superseded: list[Path] = field(default_factory=list)
    pending_sft: Path | None = None  # a warm start rebuilt under --overwrite, swapped in by clear_earlier_run

    @property
    def metrics_history(self) -> Path:
        """The metrics.jsonl whose records up to `step` the run keeps."""
        return (self.source_run or self.output_dir) / METRICS_FILE

    def clear_earlier_run(self) -> None:
        """Commit a rebuilt warm start, set superseded checkpoints aside, remove temporary leftovers and,
        when replacing, the earlier run (rank 0 only)."""
        if self.pending_sft is not None:
            self._commit_sft()
        if self.superseded:
            self._set_aside_superseded()
        for path in sorted(self.output_dir.glob(".*")):
            if path.is_dir() and path.name.startswith(TEMP_PREFIXES):
                logger.warning("removing %s, left over by an interrupted save", path)
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.name.startswith(TEMP_FILE_PREFIX):
                logger.warning("removing %s, left over by an interrupted write", path)
                path.unlink(missing_ok=True)
        if not self.replace_earlier_run:
            return
        for stale in checkpoint_dirs(self.output_dir):
            logger.warning("--overwrite: removing %s from an earlier run", stale)
            shutil.rmtree(stale)
        for name in (*RUN_FILES, WANDB_RUN_ID_FILE):  # a continued run must not append to the old run's wandb
            (self.output_dir / name).unlink(missing_ok=True)
        for events in (self.output_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
            events.unlink()

    def abandon(self) -> None:
        """The run failed before it started: remove what it built beside the earlier run (a pending warm start)."""
        if self.pending_sft is not None:
            shutil.rmtree(self.pending_sft, ignore_errors=True)
            self.pending_sft = None

    def _commit_sft(self) -> None:
        target = self.output_dir / SFT_DIR
        if target.exists():
            stale = target.with_name(f".sft.stale-{os.getpid()}")
            target.rename(stale)
            shutil.rmtree(stale)
        self.pending_sft.rename(target)
        fsync_dir(self.output_dir)
        logger.warning("--overwrite: replaced %s with the new warm start", target)
        self.pending_sft = None

    def _set_aside_superseded(self) -> None:
        index = 1 + max((_suffix(p.name) for p in self.output_dir.glob(SUPERSEDED_PREFIX + "*")), default=0)
        folder = self.output_dir / f"{SUPERSEDED_PREFIX}{index}"
        folder.mkdir()
        for name in RUN_FILES:  # as they were: metrics.jsonl is then cut back to the resumed step, atomically
            if (self.output_dir / name).is_file():
                shutil.copy2(self.output_dir / name, folder / name)
        for checkpoint in self.superseded:
            checkpoint.rename(folder / checkpoint.name)
        fsync_dir(self.output_dir)
        logger.warning(
            "resume: %s is older than %s; those (and the run's metrics and results as they were) are kept in %s",
            self.checkpoint,
            ", ".join(p.name for p in self.superseded),
            folder,
        )
        self.superseded = []


def _suffix(name: str) -> int:
    tail = name[len(SUPERSEDED_PREFIX) :]
    return int(tail) if tail.isdigit() else 0


def holds_a_run(output_dir: Path) -> list[str]:
    """The names in output_dir that belong to a run (checkpoints, metrics, results)."""
    if not output_dir.is_dir():
        return []
    names = [p.name for p in checkpoint_dirs(output_dir)]
    return names + [name for name in RUN_FILES if (output_dir / name).exists()]


def check_writable(output_dir: Path) -> None:
    """output_dir is a directory we can write, or can be created."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir: {str(output_dir)!r} is a file, not a directory; choose another --output-dir")
    existing = output_dir
    while not existing.exists():  # the nearest existing ancestor is where mkdir will write
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"output_dir: {str(existing)!r} is a file, so {str(output_dir)!r} cannot be created")
    try:
        # os.access says yes to root even on a read-only mount; a real (deleted at once) file tells the truth.
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(
            f"output_dir: {str(existing)!r} is not writable ({err.strerror or err}); choose another --output-dir"
        ) from None


def _same_dir(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def plan_run(config: TrainConfig, output_dir: Path) -> RunPlan:
    """Check output_dir and the resume against `config`; raise ValueError (naming the fix) or return the plan."""
    check_writable(output_dir)
    if config.overwrite and config.resume is not False:
        elsewhere = isinstance(config.resume, str) and not _same_dir(Path(config.resume).parent, output_dir)
        if not elsewhere:
            raise ValueError(
                "overwrite: --overwrite and --resume contradict each other (replace the run, or continue it); "
                "drop --overwrite to continue the run, or --resume to start it over"
            )
    checkpoint = checkpoint_to_resume(config, output_dir)
    found = holds_a_run(output_dir)
    if checkpoint is None:
        if found and not config.overwrite:
            raise ValueError(
                f"output_dir: {str(output_dir)!r} already holds a run ({_listing(found)}); pass --resume to continue "
                "it or --overwrite to replace it (resume=True / overwrite=True from Python), or choose another "
                "--output-dir"
            )
        return RunPlan(output_dir, None, replace_earlier_run=bool(found) and config.overwrite)
    old = checkpoint_config(checkpoint)
    changes = check_resume_config(old, config, checkpoint, output_dir)
    step = checkpoint_step(checkpoint)
    check_resume_steps(old, config, checkpoint, step)
    if not _same_dir(checkpoint.parent, output_dir):
        if found and not config.overwrite:
            raise ValueError(
                f"output_dir: {str(output_dir)!r} already holds another run ({_listing(found)}) than the one of "
                f"{checkpoint}; pass --overwrite to replace it with the continued run, or choose another --output-dir"
            )
        plan = RunPlan(output_dir, checkpoint, bool(found), changes, step, source_run=checkpoint.parent)
    else:
        newer = [p for p in checkpoint_dirs(output_dir) if _step(p) > step]
        plan = RunPlan(output_dir, checkpoint, False, changes, step, superseded=newer)
    read_metrics_lines(plan.metrics_history)  # every line must be a record: refused now, before any write
    return plan


def _step(checkpoint: Path) -> int:
    match = CHECKPOINT_RE.match(checkpoint.name)
    return int(match.group(1)) if match else -1
