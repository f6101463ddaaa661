"""The warm start's cache: output_dir/sft, made once per settings and reused by later runs and resumes.

The warm start (`tokrl.stages.warm_start`) is written with `save_pretrained` (model and tokenizer) into
`output_dir/sft/` (atomically, with `sft_config.json` describing what made it) and RL reloads it by path. A
later run or a resume with the same settings finds it and skips the stage; different settings raise instead of
mixing runs. Under --overwrite (`replace`) a warm start made with other settings is rebuilt into a pending
folder beside it (`.sft.pending-<pid>`), which the run swaps in only once it has started
(tokrl.run.run_dir.RunPlan): a run that fails before that leaves the earlier run's warm start, and the adapters
trained on it, as they were. A run continued from another directory's checkpoint copies that run's warm start
(`reuse_from`) when its settings match, instead of training it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tokrl.infra import distributed
from tokrl.infra.atomic import copy_tree_atomic, fsync_tree
from tokrl.models.loading import load_model
from tokrl.stages.warm_start import AccuracyTarget, supervised_warm_start
from tokrl.tasks import Task

logger = logging.getLogger("tokrl")

SFT_DIR = "sft"
SFT_CONFIG = "sft_config.json"


def sft_settings(config: Any) -> dict[str, Any]:
    """The config fields that determine the warm-started weights."""
    keys = ("model", "task", "task_options", "seed", "sft_steps", "sft_lr", "sft_batch_size")
    if config.sft_target_accuracy:  # only then, so warm starts cached before the target existed stay valid
        keys += ("sft_target_accuracy", "sft_check_every", "sft_check_size")
    return {k: getattr(config, k) for k in keys}


def accuracy_target(config: Any) -> AccuracyTarget | None:
    """The warm start's stopping target from `config` (None when sft_target_accuracy is 0)."""
    if not config.sft_target_accuracy:
        return None
    sampler = config.generation.sampler
    if sampler == "tokrl-merged":  # the warm start trains the plain model: no adapter to merge, the engine serves it
        sampler = "tokrl"
    return AccuracyTarget(
        accuracy=config.sft_target_accuracy,
        every=config.sft_check_every,
        size=config.sft_check_size,
        max_new_tokens=config.generation.max_new_tokens,
        sampler=sampler,
    )


def _settings_of(folder: Path) -> dict[str, Any] | None:
    """The settings a finished warm start in `folder` was made with (None when there is none)."""
    path = folder / SFT_CONFIG
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"sft: cannot read {path} ({err}); delete {folder} to train the warm start again") from None
    return found.get("settings") if isinstance(found, dict) else None


def sft_stage(
    config: Any,
    task: Task,
    output_dir: Path,
    device: torch.device,
    log: Any = print,
    replace: bool = False,
    reuse_from: Path | None = None,
) -> Path:
    """Run (or reuse) the warm start of `config.model` on `device`; returns the directory RL loads from:
    output_dir/sft, or under `replace`, when output_dir/sft was made with other settings, the pending folder
    the new warm start went to (see the module doc). reuse_from: another run directory whose warm start is
    copied when it was made with the same settings."""
    target = Path(output_dir) / SFT_DIR
    settings = json.loads(json.dumps(sft_settings(config)))  # the JSON round trip normalises tuples and keys
    found = _settings_of(target)
    destination = target
    if found is not None:
        if found == settings:
            log(f"sft: reusing the warm start in {target}")
            return target
        if not replace:
            raise ValueError(
                f"sft: {target} was made with different settings ({found} vs {settings}); "
                "use another output_dir or pass --overwrite"
            )
        log(f"sft: {target} was made with other settings; --overwrite rebuilds it (swapped in once the run starts)")
        destination = target.with_name(f".sft.pending-{os.getpid()}")
        shutil.rmtree(destination, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if reuse_from is not None and _settings_of(Path(reuse_from) / SFT_DIR) == settings:
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete earlier attempt (no sft_config.json)
        copy_tree_atomic(Path(reuse_from) / SFT_DIR, destination, temp_prefix=".sft.")
        log(f"sft: copied the warm start of {reuse_from} to {destination}")
        return destination
    log(f"sft: warm start of {config.model!r}: {config.sft_steps} steps (cached in {target})")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=device)
    done = supervised_warm_start(
        model,
        tokenizer,
        task,
        steps=config.sft_steps,
        lr=config.sft_lr,
        batch_size=config.sft_batch_size,
        seed=config.seed,
        impl=config.impl,
        target=accuracy_target(config),
    )
    tmp = Path(tempfile.mkdtemp(prefix=".sft.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        record = {"settings": settings, "losses": done.losses, "checks": done.checks, "seconds": seconds}
        (tmp / SFT_CONFIG).write_text(json.dumps(record, indent=2))
        fsync_tree(tmp)
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete earlier attempt (no sft_config.json)
        tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    first, last = (done.losses[0], done.losses[-1]) if done.losses else (float("nan"), float("nan"))
    reached = f" (check accuracy {done.checks[-1][1]:.3f})" if done.checks else ""
    log(
        f"sft: {done.steps} of {config.sft_steps} steps{reached}, loss {first:.3f} -> {last:.3f}, {seconds:.1f} s, "
        f"saved to {destination}"
    )
    return destination


def warm_start_source(
    config: Any, task: Task, output_dir: Path, device: torch.device, reuse_from: Path | None
) -> tuple[str, Path | None]:
    """(the model path the run starts from after its warm start, the warm start folder to swap into output_dir/sft
    once the run has started, or None when it is already there or on ranks other than 0). A collective: rank 0
    warms up, or finds or copies an earlier result (`reuse_from`: the run continued from), and every rank gets
    its path."""
    warm, pending = None, None
    if distributed.is_main():
        warm = sft_stage(
            config, task, output_dir, device, log=logger.info, replace=config.overwrite, reuse_from=reuse_from
        )
        pending = warm if warm != output_dir / SFT_DIR else None
    return str(distributed.all_gather_object(warm)[0]), pending
