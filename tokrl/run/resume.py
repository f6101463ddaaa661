"""Resuming a run: which checkpoint to continue, and whether the new config may continue it.

The one list of what a resume may change is `SAFE_TO_CHANGE` (flat config keys): how long the run goes on
(`steps`, to extend it), how often it evaluates, saves and logs, how it reports progress, where and how
fast it computes (device, threads, kernel implementation, activation recomputation, the multi-process
timeout) and the bookkeeping flags themselves. Every other field changes what the run means (algorithm,
task and its options, model, dtype, LoRA shape, seed, G, prompts per step, sampling, learning rate and
schedule, clipping, algorithm options, warm start, eval_size, ...): a checkpoint continued under another
value would silently mix two experiments, so `check_resume_config` refuses it and says how to proceed.
A new field is meaning-changing unless it is added here.

How long the run goes on may change, within two limits (`check_resume_steps`): `steps` below the
checkpoint's step is refused (the run cannot be made shorter than it already is), and so is any change of
`steps` under a decaying learning-rate schedule (linear, cosine): the schedule's horizon is `steps`, so a
new value would make the learning rate jump (a sawtooth) instead of continuing the curve.

`tokrl train --output-dir D --resume` (no other flags) uses the checkpoint's config as is:
`resume_config` rebuilds the config from the checkpoint's config.yaml and applies only what the user
passed explicitly (flags, --config file, --preset), so preset defaults never count as changes.

A checkpoint is complete when it holds every file `save_checkpoint` writes (`CHECKPOINT_FILES`); saves
are atomic, so an incomplete one was damaged from outside (a partial copy, a deleted file) and is skipped
with a warning in favour of the newest complete one. `--resume` with no complete checkpoint at all is an
error naming the folder: it never silently starts a new run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tokrl.config.loading import config_from_dict, load_config
from tokrl.config.schema import TrainConfig, flat_fields
from tokrl.run.checkpoint import CHECKPOINT_FILES, checkpoint_dirs

logger = logging.getLogger("tokrl")

SAFE_TO_CHANGE: frozenset[str] = frozenset(
    {
        "steps",
        "eval_every",
        "eval_batch_size",
        "save_every",
        "save_total_limit",
        "log_every",
        "progress",
        "report_to",
        "num_threads",
        "dist_timeout_s",
        "device",
        "impl",
        "gradient_checkpointing",
        "max_empty_steps",
        "output_dir",
        "resume",
        "overwrite",
    }
)


class ResumeError(ValueError):
    """The checkpoint cannot be continued with this config (the message lists why and what to do)."""


def missing_files(checkpoint: Path) -> list[str]:
    """The files of CHECKPOINT_FILES that `checkpoint` lacks or holds empty ([] = complete)."""
    return [name for name in CHECKPOINT_FILES if not _non_empty_file(checkpoint / name)]


def _non_empty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in `output_dir`; newer incomplete ones are skipped with a warning."""
    for checkpoint in reversed(checkpoint_dirs(output_dir)):
        missing = missing_files(checkpoint)
        if not missing:
            return checkpoint
        logger.warning("resume: skipping incomplete %s (missing or empty: %s)", checkpoint, ", ".join(missing))
    return None


def checkpoint_to_resume(config: TrainConfig, output_dir: Path) -> Path | None:
    """The checkpoint `config.resume` asks for: None (not resuming), the newest complete one in output_dir
    (resume=True; ResumeError when there is none), or the given folder (resume=PATH), which must be complete."""
    if config.resume is False:
        return None
    if config.resume is True:
        checkpoint = newest_complete_checkpoint(output_dir)
        if checkpoint is None:
            incomplete = [p.name for p in checkpoint_dirs(output_dir)]
            found = f" (only incomplete ones: {', '.join(incomplete)})" if incomplete else ""
            raise ResumeError(
                f"resume: no complete checkpoint in {str(output_dir)!r}{found}, so there is nothing to continue; "
                "pass --resume PATH of a checkpoint-N folder, or drop --resume to start a new run"
            )
        return checkpoint
    checkpoint = Path(config.resume)
    missing = missing_files(checkpoint) if checkpoint.is_dir() else list(CHECKPOINT_FILES)
    if missing:
        raise ResumeError(
            f"resume: {str(checkpoint)!r} is not a complete checkpoint (missing or empty: {', '.join(missing)}); "
            "pass a checkpoint-N folder written by tokrl, e.g. the one before it"
        )
    return checkpoint


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint was saved at (its trainer_state.json)."""
    path = checkpoint / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step = state["step"] if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"'step' is {step!r}, not a step number")
        return step
    except (OSError, ValueError, KeyError) as err:
        raise ResumeError(f"resume: cannot read {path} ({err}); resume from an earlier checkpoint instead") from None


def check_resume_steps(old: TrainConfig, new: TrainConfig, checkpoint: Path, step: int) -> None:
    """Refuse `steps` below the checkpoint's step, and a new `steps` under a decaying schedule."""
    if new.steps < step:
        raise ResumeError(
            f"steps: {new.steps} is below the step of {checkpoint} ({step}): a resumed run cannot be shorter than "
            f"it already is; pass --steps {step} or more, or resume an earlier checkpoint"
        )
    if new.steps != old.steps and old.lr_scheduler != "constant":
        raise ResumeError(
            f"steps: {old.steps} -> {new.steps} would restart the {old.lr_scheduler!r} learning-rate schedule of "
            f"{checkpoint}, whose decay is planned over {old.steps} steps (the learning rate would jump instead of "
            f"continuing the curve); resume with --steps {old.steps}, or start a new run with --steps {new.steps}"
        )


def checkpoint_config(checkpoint: Path) -> TrainConfig:
    """The resolved TrainConfig a checkpoint was saved with (its config.yaml)."""
    path = checkpoint / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, Mapping):
            raise ValueError("not a mapping")
        return config_from_dict(data)
    except (OSError, yaml.YAMLError, ValueError) as err:
        raise ResumeError(f"resume: cannot read {path} ({err}); resume from an earlier checkpoint instead") from None


def _flat_values(config: TrainConfig) -> dict[str, Any]:
    # The YAML round trip puts both sides in the form a checkpoint stores (tuples -> lists, numpy -> plain).
    data = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    out = {}
    for key, spec in flat_fields().items():
        out[key] = data[spec.section][spec.field.name] if spec.section else data[spec.field.name]
    return out


def config_differences(old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(flat key, old value, new value) for every field that differs, in declaration order."""
    before, after = _flat_values(old), _flat_values(new)
    return [(key, before[key], after[key]) for key in before if before[key] != after[key]]


def check_resume_config(old: TrainConfig, new: TrainConfig, checkpoint: Path, output_dir: Path) -> list[str]:
    """Refuse a resume whose config changes the run's meaning; return the safe changes ("key: a -> b")."""
    changes = config_differences(old, new)
    refused = [f"{key}: {a!r} -> {b!r}" for key, a, b in changes if key not in SAFE_TO_CHANGE]
    if refused:
        raise ResumeError(
            f"resume: {checkpoint} was trained with a different config; these fields change what the run means: "
            f"{'; '.join(refused)}. To continue that run, drop those flags (`tokrl train --output-dir {output_dir} "
            "--resume` alone uses the checkpoint's config); to start a new run, pick another --output-dir or pass "
            "--overwrite without --resume to replace this one"
        )
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in changes if key not in ("resume", "overwrite")]


def resume_config(
    config: TrainConfig, preset: str | None, config_file: str | Path | None, overrides: Mapping[str, Any]
) -> TrainConfig:
    """The config of a resumed run: the checkpoint's own config, then what the user passed explicitly
    (`preset` if named, the `config_file`, the `overrides`). `config` is the config built from defaults
    and those same sources; it is returned unchanged when it does not resume or there is no checkpoint."""
    if config.resume is False:
        return config
    output_dir = config.resolved_output_dir()
    if isinstance(config.resume, str) and "output_dir" not in overrides:
        output_dir = Path(config.resume).parent  # --resume runs/x/checkpoint-20: the run lives in runs/x
        config.output_dir = str(output_dir)
    checkpoint = checkpoint_to_resume(config, output_dir)
    if checkpoint is None:
        return config
    explicit = {**overrides, "output_dir": str(output_dir)}
    base = checkpoint_config(checkpoint)
    base.overwrite = False  # how the checkpoint's run was started, not this one: only an explicit --overwrite counts
    return load_config(preset, config_file, base=base, **explicit)
