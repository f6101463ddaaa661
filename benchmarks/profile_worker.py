"""The worker side of profile_step.py: one algorithm's trainer in this process, from the tree PYTHONPATH names.

`worker(args)`: `--warmup` untimed steps, then either `--steps` plain timed steps (`--mode time`) or the profile
(`--mode profile`): the steps with step_phases.PhaseClock wrapped around the trainer's functions (PHASES), then
`--profile-steps` under torch.profiler, then one checkpoint save and one greedy evaluation. `prepare(args)`
builds the preset's warm start. Only API every tree has is used (load_config, Trainer, train_step, save,
evaluate, MetricsLog), so the same worker times an older or newer tree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from step_phases import PHASE_ORDER, PHASES, PhaseClock, ops_per_phase

PRESET = "tiny-multiplication"
TOP_OPS = 8  # aten ops per phase kept in the JSON, by self time


def _resolve(owner: str, trainer: Any, log: Any) -> Any:
    """The object `owner` names: the worker's MetricsLog, an attribute path of the trainer, a module or a class
    in a module (None when the tree has no such thing)."""
    import importlib

    if owner == "log":
        return log
    obj, parts = (trainer, owner.split(".")[1:]) if owner.startswith("trainer.") else (None, [])
    if obj is None:
        try:
            return importlib.import_module(owner)
        except ImportError:
            module, _, name = owner.rpartition(".")
            try:
                obj, parts = importlib.import_module(module), [name]
            except ImportError:  # a module of an older or newer tree
                return None
    for part in parts:
        obj = getattr(obj, part, None)
    return obj


def _build_trainer(args: argparse.Namespace, out: Path) -> Any:
    from tokrl.config import load_config
    from tokrl.trainer import Trainer

    overrides = {
        "algorithm": args.algorithm,
        "model": args.warm_start,
        "sft_steps": 0,
        "output_dir": str(out / "run"),
        "num_threads": args.threads,
        "progress": False,
        "overwrite": True,
        **json.loads(args.overrides),
    }
    trainer = Trainer(load_config(PRESET, **overrides))
    trainer.setup()
    return trainer


def _forward_shape(prompts: list[list[int]], rows: Any, group_size: int) -> tuple[int, int]:
    """(padded tokens the loss forward runs over, tokens if each group's prompt ran once and its rows continued
    from it): the second is what a prompt-sharing forward would cost, for the report."""
    cut: dict[int, int] = {}
    for b, t in zip(rows.row.tolist(), rows.position.tolist(), strict=True):
        cut[b] = max(cut.get(b, 0), t)  # inputs: prompt + completion[:last selected position]
    if not cut:
        return 0, 0
    padded = len(cut) * max(len(prompts[b]) + n for b, n in cut.items())
    groups = {b // group_size: len(prompts[b]) for b in cut}
    return padded, sum(groups.values()) + sum(cut.values())


def _profile(args: argparse.Namespace, trainer: Any, log: Any, step: Any) -> dict[str, Any]:
    """Phase times and host reads over args.steps steps, then aten ops over args.profile_steps (docstring)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        from tokrl.stages.update import PolicyUpdate
    except ImportError:  # a tree from before tokrl/stages/
        from tokrl.policy_update import PolicyUpdate

    shapes: list[tuple[int, int]] = []
    real_apply = PolicyUpdate.apply

    def apply(update: Any, prompts: Any, completions: Any, rows: Any, *rest: Any) -> Any:
        shapes.append(_forward_shape(prompts, rows, trainer.config.generation.num_generations))
        return real_apply(update, prompts, completions, rows, *rest)

    clock = PhaseClock()
    patched = [f"{o}.{a}" for o, a, p in PHASES if clock.patch(_resolve(o, trainer, log), a, p)]
    PolicyUpdate.apply = apply
    try:
        with clock.count_host_reads():
            for i in range(args.warmup, args.warmup + args.steps):
                step(i)
        phases = {"wall": dict(clock.seconds), "cpu": dict(clock.cpu_seconds), "reads": dict(clock.host_reads)}
        first = args.warmup + args.steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(first, first + args.profile_steps):
                step(i)
    finally:
        PolicyUpdate.apply = real_apply
        clock.restore()
    ops, self_us = ops_per_phase(prof.events())
    n, m = args.steps, args.profile_steps
    return {
        "patched": patched,
        "phase_s": {p: phases["wall"].get(p, 0.0) / n for p in PHASE_ORDER[:-1]},
        "phase_cpu_s": {p: phases["cpu"].get(p, 0.0) / n for p in PHASE_ORDER[:-1]},
        "host_reads_per_step": {p: c / n for p, c in phases["reads"].items()},
        "ops_per_step": {p: c / m for p, c in ops.items()},
        "top_ops_ms_per_step": {p: {op: us / 1e3 / m for op, us in t.most_common(TOP_OPS)} for p, t in self_us.items()},
        "forward_tokens_padded": statistics.fmean(s[0] for s in shapes[:n]) if shapes else 0.0,
        "forward_tokens_if_prompts_shared": statistics.fmean(s[1] for s in shapes[:n]) if shapes else 0.0,
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One algorithm in this process: plain step times (`--mode time`) or the profile (`--mode profile`)."""
    import torch

    try:
        from tokrl.run.metrics_log import MetricsLog
    except ImportError:  # a tree from before tokrl/run/
        from tokrl.metrics import MetricsLog

    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        trainer = _build_trainer(args, Path(tmp))
        log = MetricsLog(Path(tmp) / "metrics.jsonl", total=args.warmup + args.steps, progress=False)
        records: list[dict[str, Any]] = []
        wall: list[float] = []
        cpu: list[float] = []

        def step(i: int) -> None:
            start, cpu_start = time.perf_counter(), time.process_time()
            record = trainer.train_step(i)
            log.write(record)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
            records.append(record)

        for i in range(args.warmup):
            step(i)
        del wall[:], cpu[:], records[:]
        out: dict[str, Any] = {"tokrl_file": __import__("tokrl").__file__, "threads": torch.get_num_threads()}
        if args.mode == "time":
            for i in range(args.warmup, args.warmup + args.steps):
                step(i)
            return {**out, "step_seconds": wall, "step_cpu_seconds": cpu}
        out.update(_profile(args, trainer, log, step))
        start = time.perf_counter()
        trainer.save()
        out["checkpoint_save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        trainer.evaluate()
        out["eval_s"] = time.perf_counter() - start
        log.close()
    n = args.steps
    out.update(
        step_s_median=statistics.median(wall[:n]),
        step_s_mean=statistics.fmean(wall[:n]),
        step_cpu_s_mean=statistics.fmean(cpu[:n]),
    )
    out["phase_s"]["other"] = max(out["step_s_mean"] - sum(out["phase_s"].values()), 0.0)
    out["phase_cpu_s"]["other"] = max(out["step_cpu_s_mean"] - sum(out["phase_cpu_s"].values()), 0.0)
    keys = ("selected_tokens", "forward_tokens", "completion_len", "reward_mean")
    out["per_step"] = {k: statistics.fmean(float(r[k]) for r in records[:n] if r.get(k) is not None) for k in keys}
    out["per_step"].update({k: out.pop(k) for k in ("forward_tokens_padded", "forward_tokens_if_prompts_shared")})
    return out


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or find) the preset's warm start in args.cache_dir; returns its directory."""
    import torch

    from tokrl.config import load_config
    from tokrl.run.warm_start import sft_stage
    from tokrl.tasks import get_task

    config = load_config(PRESET, output_dir=args.cache_dir)
    torch.set_num_threads(args.threads)
    task = get_task(config.task, **config.task_options)
    return {"warm_start": str(sft_stage(config, task, Path(args.cache_dir), torch.device("cpu"), log=print))}
