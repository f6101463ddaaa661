"""The output directory of a run: what may be written there, and when an earlier run may be removed.

`plan_run` is called before anything is loaded or written; it decides (and checks) everything, deletes
nothing:
- output_dir must be a directory (or not exist yet) that this process can write;
- resume: the checkpoint to continue (tokrl.resume) and the config check against it;
- not resuming: a directory holding another run (a checkpoint, metrics.jsonl or results.json) is refused
  unless `overwrite`, naming --resume and --overwrite.
`RunPlan.clear_earlier_run` is called once the new run has started (model, LoRA and optimiser built):
it removes leftover temporary folders of a killed save and, under `overwrite`, the earlier run's
checkpoints, metrics and results. The SFT cache (output_dir/sft) is kept: it guards its own settings.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokrl.checkpoint import checkpoint_dirs
from tokrl.config import TrainConfig
from tokrl.resume import check_resume_config, checkpoint_config, checkpoint_to_resume

logger = logging.getLogger("tokrl")

RUN_FILES = ("metrics.jsonl", "results.json")
TEMP_PREFIXES = (".checkpoint-", ".stale-checkpoint-", ".sft.")


@dataclass
class RunPlan:
    """What setup will do in output_dir: resume `checkpoint` (None = start at step 0), and whether the
    earlier run's files go once the new run has started."""

    output_dir: Path
    checkpoint: Path | None = None
    replace_earlier_run: bool = False
    changes: list[str] = field(default_factory=list)

    def clear_earlier_run(self) -> None:
        """Remove temporary folders of killed saves and, when replacing, the earlier run (rank 0 only)."""
        for path in sorted(self.output_dir.glob(".*")):
            if path.is_dir() and path.name.startswith(TEMP_PREFIXES):
                logger.warning("removing %s, left over by an interrupted save", path)
                shutil.rmtree(path, ignore_errors=True)
        if not self.replace_earlier_run:
            return
        for stale in checkpoint_dirs(self.output_dir):
            logger.warning("--overwrite: removing %s from an earlier run", stale)
            shutil.rmtree(stale)
        for name in RUN_FILES:
            (self.output_dir / name).unlink(missing_ok=True)


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


def plan_run(config: TrainConfig, output_dir: Path) -> RunPlan:
    """Check output_dir and the resume against `config`; raise ValueError (naming the fix) or return the plan."""
    check_writable(output_dir)
    checkpoint = checkpoint_to_resume(config, output_dir)
    if checkpoint is not None:
        changes = check_resume_config(checkpoint_config(checkpoint), config, checkpoint, output_dir)
        return RunPlan(output_dir, checkpoint, changes=changes)
    found = holds_a_run(output_dir)
    if config.resume is False and found and not config.overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(
            f"output_dir: {str(output_dir)!r} already holds a run ({shown}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    if config.resume is True:
        logger.info("resume: no complete checkpoint in %s; starting from step 0", output_dir)
    return RunPlan(output_dir, None, replace_earlier_run=bool(found) and config.overwrite)
