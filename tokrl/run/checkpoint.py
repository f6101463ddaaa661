"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

`output_dir/checkpoint-{step}/` holds
    adapter_model.safetensors, adapter_config.json   the LoRA adapter (peft `save_pretrained`)
    optimizer.pt, scheduler.pt                        optimiser and learning-rate scheduler state
    rng_state.pt                                      python, numpy, torch CPU and CUDA generator states
    rng_state_rank{r}.pt                              multi-process runs: the same for every rank r (rank 0's
                                                      is also rng_state.pt, so one process can resume it)
    trainer_state.json                                step, evaluation so far, run bookkeeping
    algorithm_state.json                              `Algorithm.state_dict()` (T-SPMO's replay buffer)
    config.yaml                                       the resolved TrainConfig
It is written into a temporary sibling, fsynced and renamed into place, so a crash never leaves a half
checkpoint that `latest_checkpoint` would pick up; a write that fails (a full disk: torch reports it as
"unexpected pos", safetensors as an I/O error) is one CheckpointError naming the checkpoint and the
previous one, which is intact. Only the newest `keep` checkpoints up to the one just written are kept:
pruning never removes the checkpoint it has just written, nor a newer one. In a multi-process run
only rank 0 writes (the trainer gathers every rank's RNG state first) and each rank restores its own RNG
file. `StopSignals` turns SIGINT/SIGTERM into a request the training loop answers with a checkpoint after
the current step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from peft import PeftModel
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from tokrl.infra.atomic import fsync_dir, fsync_tree

logger = logging.getLogger("tokrl")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and what to do."""


# Every file `save_checkpoint` writes (rng_state_rank{r}.pt only in a multi-process run): a checkpoint lacking one
# is incomplete.
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pt",
    "trainer_state.json",
    "algorithm_state.json",
    "config.yaml",
)


@dataclass
class CheckpointState:
    """What `load_checkpoint` restores besides the tensors it loads in place (its config.yaml is read once, by
    tokrl.run.resume, before the run is built)."""

    step: int
    trainer_state: dict[str, Any] = field(default_factory=dict)
    algorithm_state: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """Every random generator the run touches."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The checkpoint-{step} directories in `output_dir`, oldest step first (complete or not: resume checks
    that, tokrl.run.resume.missing_files)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    algorithm_state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 0,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write `output_dir/checkpoint-{step}` atomically (replacing one of the same step); keep the newest
    `keep` checkpoints (0 = all). rng_states: every rank's `rng_state()` in rank order (default: this
    process's only). Returns the checkpoint directory."""
    rng_states = rng_states or [rng_state()]
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=root))
    try:
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states[0], tmp / "rng_state.pt")
        for r, state in enumerate(rng_states if len(rng_states) > 1 else []):
            torch.save(state, tmp / f"rng_state_rank{r}.pt")
        _write_json(tmp / "trainer_state.json", {**trainer_state, "step": step})
        _write_json(tmp / "algorithm_state.json", algorithm_state)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        fsync_tree(tmp)
        if final.exists():
            stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
            final.rename(stale)
            shutil.rmtree(stale)
        tmp.rename(final)
        fsync_dir(root)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(root, final, step, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        older = [p for p in checkpoint_dirs(root) if _step(p) < step]  # never the one just written, nor a newer one
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_DISK_WORDS = ("unexpected pos", "no space left", "storagefull", "disk quota")


def _disk_full(root: Path, err: BaseException) -> bool:
    """A failed write looks like a full disk: ENOSPC/EDQUOT anywhere in the chain, torch's or safetensors'
    wording for a short write, or almost no space left under `root`."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _FULL_DISK_ERRNOS:
            return True
        if any(word in str(cause).lower() for word in _FULL_DISK_WORDS):
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        return shutil.disk_usage(root).free < 2**20
    except OSError:
        return False


def _save_error(root: Path, final: Path, step: int, err: Exception) -> CheckpointError:
    previous = [p for p in checkpoint_dirs(root) if _step(p) < step]
    kept = f"; {previous[-1]} is intact" if previous else ""
    if _disk_full(root, err):
        return CheckpointError(
            f"no space left on the device while saving {final}{kept}; free some space (or lower "
            "--save-total-limit) and continue with --resume"
        )
    cause = (str(err).splitlines() or [""])[0][:200]
    return CheckpointError(
        f"could not write {final} ({type(err).__name__}: {cause}){kept}; fix the cause and continue with --resume"
    )


def load_checkpoint(
    path: str | Path, *, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> CheckpointState:
    """Load the adapter, optimiser, scheduler and RNG states of checkpoint `path` in place; RNG states are
    rank `rank`'s when the checkpoint has them (a multi-process run's), else rng_state.pt."""
    path = Path(path)
    with _reading(path, ADAPTER_FILE):
        adapter = load_file(str(path / ADAPTER_FILE), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, adapter)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    missing = [k for k in result.missing_keys if "lora_" in k]
    if unexpected or missing:
        raise RuntimeError(
            f"checkpoint {path}: the adapter does not match the model (lora_r or target modules changed?): "
            f"unexpected {unexpected[:3]}, missing {missing[:3]}"
        )
    with _reading(path, "optimizer.pt"):
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    with _reading(path, "scheduler.pt"):
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank_file = f"rng_state_rank{rank}.pt" if (path / f"rng_state_rank{rank}.pt").is_file() else "rng_state.pt"
    with _reading(path, rank_file):
        set_rng_state(torch.load(path / rank_file, weights_only=False))
    with _reading(path, "trainer_state.json"):
        trainer_state = _json_object(path / "trainer_state.json")
        step = trainer_state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or not isinstance(trainer_state.get("evals", []), list):
            raise ValueError(f"step {step!r} or evals {trainer_state.get('evals')!r} is not what tokrl writes")
    with _reading(path, "algorithm_state.json"):
        algorithm_state = _json_object(path / "algorithm_state.json")
    return CheckpointState(step=step, trainer_state=trainer_state, algorithm_state=algorithm_state)


def _json_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__} {json.dumps(data)[:40]}")
    return data


@contextlib.contextmanager
def checkpoint_file(checkpoint: Path, name: str) -> Iterator[None]:
    """Turn an error while reading (or applying) `checkpoint`/`name` into one CheckpointError naming it."""
    with _reading(checkpoint, name):
        yield


@contextlib.contextmanager
def _reading(checkpoint: Path, name: str) -> Iterator[None]:
    """Turn a truncated or corrupt checkpoint file into one CheckpointError naming it and the way out."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 (torch, safetensors, json and yaml each raise their own types)
        earlier = [p for p in checkpoint_dirs(checkpoint.parent) if p != checkpoint and _step(p) < _step(checkpoint)]
        hint = f"resume from the previous checkpoint with --resume {earlier[-1]}" if earlier else "start a new run"
        cause = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint file {checkpoint / name} is truncated or corrupt ({type(err).__name__}: {cause}); {hint}"
        ) from None


def _step(checkpoint: Path) -> int:
    match = CHECKPOINT_RE.match(checkpoint.name)
    return int(match.group(1)) if match else -1


class StopSignals:
    """SIGINT/SIGTERM set `requested` (the loop checkpoints and exits after the current step); a second
    SIGINT raises KeyboardInterrupt. Previous handlers come back on exit. Main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
