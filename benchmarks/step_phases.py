"""Where an RL step's time goes: exclusive wall time, host reads and torch ops per phase of `Trainer.train_step`.

`PhaseClock` wraps named functions of the trainer's modules (`patch(owner, attribute, phase)`) so each call
adds its *exclusive* wall time to its phase: a phase called inside another (the reference log-probs inside
the micro-batch packing) is subtracted from the outer one, so the phases of a step add up to at most the
step, and `other` (the step minus every phase) is the trainer's own glue. Each call also opens a
`torch.profiler.record_function("phase::<name>")` range, so a profiler trace attributes ops to phases.

Host reads: `count_host_reads()` counts the tensor -> host conversions (`item`, `tolist`, `bool`, `float`,
`int`, `cpu`, `numpy`) per phase. On CPU they are cheap; on a GPU each one of a device tensor waits for the
device (a sync), which is why they are counted. Ops: `ops_per_phase(events)` counts the top-level aten ops
(those not called from inside another aten op) of a profiler trace, by the nearest enclosing phase range, and
every aten op's self time.

Patching is for measurement only: the wrappers call the original function with the same arguments, and
`restore()` puts every original back.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import record_function

PHASE_PREFIX = "phase::"
OTHER = "other"
# Tensor -> host conversions: each one waits for the device on a GPU (counted here on whatever device).
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")

# The phases of `Trainer.train_step` that profile_step.py times: (owner, attribute, phase). Owners: a module path,
# or "trainer.<attr>" / "log" inside the worker. A name a tree lacks is skipped, so the map also serves older or
# newer trees; sub-phases of the sampler come first.
PHASES: list[tuple[str, str, str]] = [
    ("tokrl.sampler.engine", "prefill", "sampling: prefill"),
    ("tokrl.sampler.engine", "decode_step", "sampling: decode steps"),
    ("tokrl.sampler.engine", "choose_tokens", "sampling: token choice"),
    ("tokrl.sampler.prefix_decode", "prefill", "sampling: prefill"),
    ("tokrl.sampler.prefix_decode", "forward_logits", "sampling: decode steps"),
    ("tokrl.sampler.prefix_decode._Nodes", "branch", "sampling: decode steps"),
    ("tokrl.sampler.prefix_decode", "choose_tokens", "sampling: token choice"),
    ("tokrl.trainer", "sample_groups", "sampling: rest"),
    ("tokrl.stages.collect", "sample_groups", "sampling: rest"),
    ("tokrl.trainer", "encode_prompts", "prompts, decode"),
    ("tokrl.trainer", "decode", "prompts, decode"),
    ("tokrl.stages.collect", "encode_prompts", "prompts, decode"),
    ("tokrl.stages.collect", "decode", "prompts, decode"),
    ("trainer.task", "render_prompt", "prompts, decode"),
    ("trainer.task", "reward", "reward"),
    ("tokrl.trainer", "validate_rewards", "reward"),
    ("trainer.algorithm", "rollout_prefix", "selection"),
    ("trainer.algorithm", "process_group", "selection"),
    ("trainer.algorithm", "process_groups", "selection"),
    ("trainer.algorithm", "observe", "selection"),
    ("tokrl.trainer", "gather_rows", "packing"),
    ("tokrl.stages.select", "gather_rows", "packing"),
    ("tokrl.policy_update.PolicyUpdate", "_micro_batches", "packing"),
    ("tokrl.policy_update.PolicyUpdate", "reference_logp", "reference log-probs"),
    ("tokrl.policy_update.PolicyUpdate", "_loss_backward", "forward/backward"),
    ("tokrl.stages.update.PolicyUpdate", "_micro_batches", "packing"),
    ("tokrl.stages.update.PolicyUpdate", "reference_logp", "reference log-probs"),
    ("tokrl.stages.update.PolicyUpdate", "_loss_backward", "forward/backward"),
    ("trainer.update.optimizer", "step", "optimiser"),
    ("trainer.update.optimizer", "zero_grad", "optimiser"),
    ("trainer.update.scheduler", "step", "optimiser"),
    ("torch.nn.utils", "clip_grad_norm_", "optimiser"),
    ("tokrl.trainer", "sampler_logp_gaps", "metrics"),
    ("tokrl.trainer", "sampler_gap_stats", "metrics"),
    ("tokrl.trainer", "reward_stats", "metrics"),
    ("tokrl.trainer", "step_metrics", "metrics"),
    ("tokrl.stages.record", "sampler_logp_gaps", "metrics"),
    ("tokrl.stages.record", "sampler_gap_stats", "metrics"),
    ("tokrl.stages.record", "reward_stats", "metrics"),
    ("tokrl.trainer", "peak_memory_mib", "metrics"),
    ("tokrl.stages.collect", "peak_memory_mib", "metrics"),
    ("tokrl.trainer", "reset_peak_memory", "metrics"),
    ("tokrl.policy_update.PolicyUpdate", "_peak_mib", "metrics"),
    ("tokrl.stages.update.PolicyUpdate", "_peak_mib", "metrics"),
    ("log", "write", "metrics"),
]
PHASE_ORDER = [*dict.fromkeys(phase for _, _, phase in PHASES), OTHER]  # the report's row order


class PhaseClock:
    """Exclusive wall and CPU time (seconds), calls and host reads per phase; see the module docstring.

    CPU time is this thread's (`time.thread_time`): with one torch thread every op runs on it, and, unlike wall
    time, it barely grows when other processes share the cores.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.cpu_seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.host_reads: Counter[str] = Counter()
        self._stack: list[list[Any]] = []  # open calls: [phase, wall s, CPU s spent in nested phases]
        self._patched: list[tuple[Any, str, Any]] = []

    @property
    def current(self) -> str:
        return self._stack[-1][0] if self._stack else OTHER

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` with its exclusive time added to `phase` (works for plain functions and methods alike)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [phase, 0.0, 0.0]
            self._stack.append(frame)
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                with record_function(PHASE_PREFIX + phase):
                    return fn(*args, **kwargs)
            finally:
                total, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
                self._stack.pop()
                self.seconds[phase] += total - frame[1]
                self.cpu_seconds[phase] += cpu - frame[2]
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][1] += total
                    self._stack[-1][2] += cpu

        return timed

    def patch(self, owner: Any, attribute: str, phase: str) -> bool:
        """Time `owner.attribute` as `phase` from now on; False (nothing patched) when it does not exist, so
        one phase map serves source trees where a function was renamed or removed."""
        if isinstance(owner, type):  # a class: wrap the function itself, so every instance's calls are timed
            original = owner.__dict__.get(attribute)
            if original is None or isinstance(original, staticmethod | classmethod):
                return False
            target = original
        else:  # a module or an instance: wrap what the attribute gives now (a bound method for an instance)
            target = getattr(owner, attribute, None)
            if target is None:
                return False
            original = vars(owner).get(attribute) if hasattr(owner, "__dict__") else None
        self._patched.append((owner, attribute, original))
        setattr(owner, attribute, self.wrap(phase, target))
        return True

    def restore(self) -> None:
        """Undo every patch in reverse order; an instance attribute that only shadowed its class's method is
        deleted again (a wrapper left in an object's __dict__ would, e.g., end up in its state_dict)."""
        for owner, attribute, original in reversed(self._patched):
            if original is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        self._patched.clear()

    @contextmanager
    def count_host_reads(self) -> Iterator[None]:
        """Count `HOST_READS` on any tensor into the phase open at the time of the call."""
        originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        own = {name for name in HOST_READS if name in torch.Tensor.__dict__}  # the rest come from TensorBase

        def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                self.host_reads[self.current] += 1
                return fn(tensor, *args, **kwargs)

            return read

        for name, fn in originals.items():
            setattr(torch.Tensor, name, counting(name, fn))
        try:
            yield
        finally:
            for name, fn in originals.items():
                if name in own:
                    setattr(torch.Tensor, name, fn)
                else:
                    delattr(torch.Tensor, name)


def _phase_of(event: Any) -> str:
    """The nearest enclosing phase range of a profiler event, else OTHER."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(PHASE_PREFIX):
            return parent.name[len(PHASE_PREFIX) :]
        parent = parent.cpu_parent
    return OTHER


def ops_per_phase(events: Iterable[Any]) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """From a profiler trace (`prof.events()`): (top-level aten ops per phase, {phase: {op: self-time us}}).

    Self time is exclusive, so the self times of all aten ops of a phase add up to its time inside torch ops.
    """
    counts: Counter[str] = Counter()
    self_us: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        phase = _phase_of(event)
        self_us[phase][event.name] += event.self_cpu_time_total
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(("aten::", PHASE_PREFIX)):
            parent = parent.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue  # called by another op: part of that op, not a separate dispatch from Python
        counts[phase] += 1
    return counts, dict(self_us)
