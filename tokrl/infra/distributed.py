"""Data-parallel training over `torch.distributed`, as started by `torchrun` or `accelerate launch`.

The launcher starts one process per GPU (or per CPU slot) and sets WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init` joins the group those variables describe (NCCL on CUDA with the
device cuda:LOCAL_RANK, gloo on CPU) with a timeout, so a peer that hangs or dies turns into an error on
every rank instead of a silent wait. Without those variables (one plain process) every helper here is a
no-op and the trainer runs exactly as it does alone. tokrl never starts processes itself.

How the trainer splits the work (tokrl/trainer.py):
- prompts_per_step is the global batch: every rank draws the same step prompt list from (seed, step) and
  takes its contiguous slice of prompts_per_step / world_size prompts; a prompt's G completions stay on
  the rank that owns the prompt (T-SPMO's prefix trie needs the whole group).
- scored groups are gathered (token ids and rewards: small), so every rank's algorithm observes the same
  groups in the same order (T-SPMO's replay buffer is identical everywhere) and the logged reward,
  length and zero-std statistics are global.
- the loss weights are divided by the global sum of norm_units; each rank's loss is the sum over its own
  rows, so the full-batch loss is the sum of the ranks' losses and its gradient is the SUM of the ranks'
  gradients. The LoRA gradients (the only trainable parameters) are flattened into one buffer and
  summed with one all_reduce after backward: no DistributedDataParallel wrapper, because the loss runs
  the decoder body (`hidden_states`) rather than `model.forward`, where DDP's hooks live, and a sum (not
  DDP's mean) is what makes N processes equal one process with the whole batch.
- a failure on one rank is logged with the rank, the process group is torn down (peers blocked in a
  collective get an error at once, or at the timeout at worst) and the exception propagates, so the
  process exits non-zero and the launcher stops the other ranks.
- a failure the ranks can wait for (a reward function's error, raised on the rank that scores) is agreed
  instead (`fail_together`): every rank learns of it at the same point, so all of them can still save the
  last good step together before they stop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger("tokrl")


@dataclass(frozen=True)
class LaunchEnv:
    """The process's place in the job, as the launcher's environment variables describe it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read WORLD_SIZE / RANK / LOCAL_RANK (set by torchrun and accelerate launch); one process without them."""
    environ = os.environ if environ is None else environ
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return LaunchEnv()
    rank = int(environ.get("RANK", "0"))
    local = int(environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; check the launcher's environment")
    return LaunchEnv(rank=rank, world_size=world, local_rank=local)


def check_world_size(prompts_per_step: int, world_size: int) -> None:
    """The global batch must split into equal whole-prompt shards (checked before any weights load)."""
    if world_size > 1 and prompts_per_step % world_size != 0:
        lower = max(world_size, prompts_per_step // world_size * world_size)
        raise ValueError(
            f"prompts_per_step: {prompts_per_step} prompts per step (the global batch) do not split evenly over "
            f"{world_size} processes (world size); use a multiple of {world_size}, e.g. {lower} or "
            f"{lower + world_size}"
        )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The run's device; "auto" and "cuda" mean cuda:LOCAL_RANK (the launcher's GPU for this process)."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for but CUDA is not available; use --device cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def any_rank(flag: bool) -> bool:
    """True when `flag` is True on any rank (a collective in a multi-process run: every rank calls it)."""
    if world_size() == 1:
        return flag
    return bool(all_reduce_max(torch.tensor([float(flag)]))[0] > 0)


def init(device: torch.device, timeout_s: float) -> bool:
    """Join the launcher's process group (a no-op for one process or a group that already exists).

    Returns True when this call created the group (then `destroy` should end it)."""
    env = launch_env()
    if env.world_size == 1 or is_distributed():
        return False
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ValueError(
            f"WORLD_SIZE={env.world_size} is set but MASTER_ADDR/MASTER_PORT are not; start multi-process runs "
            "with torchrun or accelerate launch"
        )
    timeout = timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    if not env.is_main:
        logging.getLogger("tokrl").setLevel(logging.WARNING)  # rank 0 speaks for the run
    return True


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _all_reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":  # NCCL reduces CUDA tensors only
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(staged, op=op)
        tensor.copy_(staged)
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (and return it); CPU tensors work with NCCL too."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of `tensor` over ranks in place (and return it)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects: token lists, RNG states, small dicts)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_gradients(params: list[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
    """Sum the gradients of `params` and the 1-D fp32 `extra` over ranks with one all_reduce.

    A parameter without a gradient (this rank selected no tokens) contributes zeros and gets the sum.
    Returns the summed `extra`."""
    if not is_distributed():
        return extra
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra.float().to(grads[0].device)])  # [n + e]
    _all_reduce(flat, dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n
    return flat[offset:].to(extra.device)  # [e]


@contextmanager
def fail_together(error_type: type[Exception]) -> Iterator[None]:
    """Run the block, then agree over ranks whether it raised `error_type` on any of them; if so, every rank raises.

    A collective in a multi-process run: every rank enters the block. A rank whose block raised `error_type`
    re-raises its own error; the others raise `error_type("rank R of N failed: <its message>")`, whose
    `failed_ranks` lists the ranks that failed (so a rank's log says it stopped, not that it failed). The agreement
    is one all_reduce of a flag (the messages are gathered only after a failure); one process adds nothing.
    Other exceptions propagate at once, as without this (`report_failures` then stops the peers)."""
    if world_size() == 1:
        yield
        return
    try:
        yield
    except error_type as err:
        _failed_ranks(str(err))
        raise
    failed = _failed_ranks(None)
    if failed:
        first, message = next(iter(failed.items()))
        ranks = f"rank {first}" if len(failed) == 1 else "ranks " + ", ".join(map(str, failed))
        where = "" if len(failed) == 1 else f"; rank {first}"
        error = error_type(f"{ranks} of {world_size()} failed{where}: {message}")
        error.failed_ranks = sorted(failed)  # what `report_failures` tells apart from this rank's own failure
        raise error


def _failed_ranks(message: str | None) -> dict[int, str]:
    """{rank: message} of the ranks that passed a message (every rank calls it; None: this rank did not fail)."""
    if not any_rank(message is not None):
        return {}
    return {r: m for r, m in enumerate(all_gather_object(message)) if m is not None}


def _peer_failure(err: BaseException) -> list[int] | None:
    """The failed ranks `fail_together` named on `err` or on an error it was raised from (None: not a peer's)."""
    while err is not None:
        if getattr(err, "failed_ranks", None) is not None:
            return err.failed_ranks
        err = err.__cause__
    return None


@contextmanager
def report_failures(what: str | Callable[[], str]) -> Iterator[None]:
    """Log an exception with this rank's number and tear the group down so peers stop too, then re-raise.

    what: the phase, or a function giving it when the exception comes (e.g. the step it happened at)."""
    try:
        yield
    except BaseException as err:
        if is_distributed():
            what = what if isinstance(what, str) else what()
            peers = _peer_failure(err)
            if peers is not None and rank() not in peers:
                logger.error("rank %d of %d stops during %s: %s", rank(), world_size(), what, err)
            else:
                logger.error(
                    "rank %d of %d failed during %s: %s: %s; shutting down the process group so the other ranks "
                    "stop (the launcher ends them)",
                    rank(),
                    world_size(),
                    what,
                    type(err).__name__,
                    err,
                )
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 (already broken: the original error is what matters)
                pass
        raise
