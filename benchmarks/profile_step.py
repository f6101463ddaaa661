"""CPU profile of one RL step of the embedded default (`tiny-multiplication`), per algorithm, and old vs new.

    python benchmarks/profile_step.py                                  # profile this tree: JSON + Markdown
    python benchmarks/profile_step.py --compare /work/wt/speed-base    # + step time of this tree vs another
    python benchmarks/profile_step.py --compare ../base --variant 'shared={"share_prompts": true}' --no-profile

The shape is the preset's (64 prompts x G 8, max_new_tokens 5, LoRA r 16 on 7 projections, 2 threads), and the
policy starts from the preset's warm start, built once into `--cache-dir` with the preset's settings and seed
(T-SPMO's selected count depends on the policy, so a random model would not do). Every step runs through
`Trainer.train_step` and `MetricsLog.write`, as in `tokrl train`; steps are seeded from (seed, step), so every
run of a tree repeats the same work.

Profile (`--mode profile`, per algorithm, in a subprocess): `--warmup` untimed steps, then `--steps` steps with
the trainer's functions wrapped by `step_phases.PhaseClock` (exclusive wall time per phase: sampling and its
parts, prompts/decode, reward, selection, packing, reference log-probs, forward/backward, optimiser, metrics;
`other` is the trainer's own glue) and counting host reads, then `--profile-steps` steps under
`torch.profiler` for the aten ops per phase. One checkpoint save and one greedy evaluation are timed apart:
the preset saves once per run and evaluates twice, so they are not per-step costs.

Comparison (`--compare TREE`): `--rounds` rounds; in each, every algorithm runs `--warmup` + `--steps` plain
steps (no wrappers) once per variant, each in its own subprocess with PYTHONPATH=<its tree>: "base" (TREE),
"new" (this tree) and any `--variant LABEL=JSON` (this tree with those config overrides, e.g. share_prompts).
The order of the variants rotates between rounds and algorithms, so load on a shared machine hits them alike.
Ratios are each variant's median step time over base's (all timed steps of all rounds pooled), in wall time
and in process CPU time (which grows less when other processes share the cores).

The worker imports `tokrl` from whatever PYTHONPATH names, so it only uses API both trees have: `load_config`,
`Trainer(...).setup()`, `train_step`, `save`, `evaluate` and `MetricsLog`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # step_phases, profile_worker: this script's folder, whoever imports it

from profile_worker import PRESET, prepare, worker  # noqa: E402
from step_phases import PHASE_ORDER  # noqa: E402

THIS_TREE = HERE.parent
ALGORITHMS = ("t-spmo", "s-grpo", "grpo")
RESULT_MARK = "PROFILE_STEP_RESULT "
# ------------------------------------------------------------------------------------------------ parent


def _run_worker(tree: Path, mode: str, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Run this script as a worker with PYTHONPATH=tree; returns the JSON it printed last."""
    flags = {
        "mode": mode,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "profile_steps": args.profile_steps,
        "cache_dir": args.cache_dir,
        "overrides": args.overrides,
        **extra,
    }  # `extra` may replace the overrides (a comparison variant's)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    for key, value in flags.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker in {tree} ({mode} {extra}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK) :])


def _tree_info(tree: Path) -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))  # new result files are not code changes
    return {"path": str(tree), "commit": git("rev-parse", "HEAD"), "dirty": dirty}


def _variants(args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    """label -> (source tree, extra config overrides as JSON): base, new, then every --variant of this tree."""
    variants = {"base": (args.compare.resolve(), "{}"), "new": (THIS_TREE, "{}")}
    for spec in args.variant:
        label, _, overrides = spec.partition("=")
        json.loads(overrides)  # fail here, not in a worker
        variants[label] = (THIS_TREE, overrides)
    return variants


def compare(args: argparse.Namespace, warm_start: str) -> dict[str, Any]:
    """Plain step times of every variant, in subprocesses whose order rotates each round (module docstring)."""
    variants = _variants(args)
    names = list(variants)
    out: dict[str, Any] = {a: {k: {n: [] for n in names} for k in ("wall", "cpu", "rounds")} for a in args.algorithms}
    for r in range(args.rounds):
        for j, algorithm in enumerate(args.algorithms):
            shift = (r + j) % len(names)
            for name in names[shift:] + names[:shift]:
                tree, overrides = variants[name]
                got = _run_worker(tree, "time", args, algorithm=algorithm, warm_start=warm_start, overrides=overrides)
                runs = out[algorithm]
                runs["wall"][name] += got["step_seconds"]
                runs["cpu"][name] += got["step_cpu_seconds"]
                runs["rounds"][name].append(statistics.median(got["step_seconds"]))
                print(f"round {r + 1} {algorithm} {name}: {statistics.median(got['step_seconds']) * 1e3:.1f} ms")
    for runs in out.values():
        for kind in ("wall", "cpu"):
            medians = {n: statistics.median(runs[kind][n]) for n in names}
            runs[f"{kind}_median_s"] = medians
            runs[f"{kind}_ratio"] = {n: medians[n] / medians["base"] for n in names}
        del runs["wall"], runs["cpu"]  # every step's time: large, and the medians say it
    trees = {name: {**_tree_info(tree), "overrides": json.loads(o)} for name, (tree, o) in variants.items()}
    return {"variants": trees, "steps_per_run": args.steps, "algorithms": out}


def _ops_reads(profile: dict[str, Any], phase: str) -> str:
    return f"{profile['ops_per_step'].get(phase, 0):.0f} / {profile['host_reads_per_step'].get(phase, 0):.0f}"


def _total_ops_reads(profile: dict[str, Any]) -> str:
    return f"{sum(profile['ops_per_step'].values()):.0f} / {sum(profile['host_reads_per_step'].values()):.0f}"


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _render_variant_profiles(variants: dict[str, dict[str, Any]]) -> list[str]:
    """Per phase and algorithm, each profiled variant's thread CPU ms, then its ops / host reads, side by side."""
    if not variants:
        return []
    labels, algos = list(variants), list(next(iter(variants.values())))
    lines = ["", f"Per phase, thread CPU ms per step, then top-level aten ops / host reads: {' / '.join(labels)}.", ""]
    lines += [_row("phase", [f"{a} CPU ms" for a in algos] + [f"{a} ops / reads" for a in algos])]
    lines += ["|---|" + "---:|" * 2 * len(algos)]
    for phase in PHASE_ORDER:
        times = [
            " / ".join(f"{variants[v][a]['phase_cpu_s'].get(phase, 0.0) * 1e3:.1f}" for v in labels) for a in algos
        ]
        counts = [" / ".join(_ops_reads(variants[v][a], phase) for v in labels) for a in algos]
        lines.append(_row(phase, times + counts))
    totals = [" / ".join(f"**{variants[v][a]['step_cpu_s_mean'] * 1e3:.1f}**" for v in labels) for a in algos]
    counts = [" / ".join(_total_ops_reads(variants[v][a]) for v in labels) for a in algos]
    return [*lines, _row("**step**", totals + counts)]


def render(data: dict[str, Any]) -> str:
    """The Markdown tables of a result JSON: the phase split per algorithm, then the comparison if any."""
    lines = [f"CPU, `{PRESET}` preset shape, {data['machine']['threads']} torch thread(s), {data['date']}."]
    profiles = data.get("profiles", {})
    algos = list(profiles)
    if algos:
        lines += [
            "",
            "Per step: wall ms (share of the step) / CPU ms of the main thread (all of the work with one torch "
            "thread; the step row: the process's); top-level aten ops / host reads.",
            "",
            _row("phase", [f"{a} ms" for a in algos] + [f"{a} ops / reads" for a in algos]),
            "|---|" + "---:|" * 2 * len(algos),
        ]
        for phase in PHASE_ORDER:
            times = []
            for a in algos:
                wall, cpu = profiles[a]["phase_s"].get(phase, 0.0), profiles[a]["phase_cpu_s"].get(phase, 0.0)
                times.append(f"{wall * 1e3:.1f} ({wall / profiles[a]['step_s_mean']:.0%}) / {cpu * 1e3:.1f}")
            counts = [_ops_reads(profiles[a], phase) for a in algos]
            lines.append(_row(phase, times + counts))
        totals = [f"**{p['step_s_mean'] * 1e3:.1f}** / {p['step_cpu_s_mean'] * 1e3:.1f}" for p in profiles.values()]
        counts = [_total_ops_reads(p) for p in profiles.values()]
        lines += [_row("**step**", totals + counts), "", _row("per step", algos), "|---|" + "---:|" * len(algos)]
        for key in profiles[algos[0]]["per_step"]:
            lines.append(_row(key, [f"{profiles[a]['per_step'][key]:.4g}" for a in algos]))
        for key, label in (
            ("checkpoint_save_s", "checkpoint save (once per run), ms"),
            ("eval_s", "greedy eval of the test split (twice per run), ms"),
        ):
            lines.append(_row(label, [f"{profiles[a][key] * 1e3:.0f}" for a in algos]))
    lines += _render_variant_profiles(data.get("variant_profiles", {}))
    comparison = data.get("comparison")
    if comparison:
        variants = comparison["variants"]
        names = list(variants)
        described = [
            f"{n}: `{v['commit'][:10]}`{' + uncommitted changes' if v['dirty'] else ''}"
            + (f" with `{json.dumps(v['overrides'])}`" if v["overrides"] else "")
            for n, v in variants.items()
        ]
        lines += [
            "",
            f"Step time, subprocesses in rotating order, {comparison['steps_per_run']} steps per run; median wall ms "
            f"(ratio to base) / median CPU ms (ratio). {'; '.join(described)}.",
            "",
            _row("algorithm", names + ["round medians (wall ms)"]),
            "|---|" + "---:|" * len(names) + "---|",
        ]
        for a, c in comparison["algorithms"].items():
            wall, cpu, wall_ratio, cpu_ratio = c["wall_median_s"], c["cpu_median_s"], c["wall_ratio"], c["cpu_ratio"]
            cells = [
                f"{wall[n] * 1e3:.1f} (**{wall_ratio[n]:.2f}**) / {cpu[n] * 1e3:.1f} ({cpu_ratio[n]:.2f})"
                for n in names
            ]
            rounds = "; ".join(f"{n} " + ", ".join(f"{t * 1e3:.0f}" for t in c["rounds"][n]) for n in names)
            lines.append(_row(a, cells + [rounds]))
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the preset's 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--steps", type=int, default=30, help="timed steps per profile or comparison run")
    p.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler (ops per phase)")
    p.add_argument("--rounds", type=int, default=3, help="comparison rounds")
    p.add_argument("--compare", type=Path, help="another source tree to time against (e.g. a worktree of main)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="also time this tree with these config overrides, e.g. 'shared={\"share_prompts\": true}'",
    )
    p.add_argument("--no-profile", action="store_true", help="only the comparison")
    p.add_argument(
        "--profile-variants",
        nargs="*",
        default=[],
        metavar="LABEL",
        help="profile these comparison variants too (e.g. base shared), for a per-phase before/after table",
    )
    p.add_argument("--cache-dir", default=str(THIS_TREE / "outputs" / "profile-step"), help="warm start cache")
    p.add_argument("--overrides", default="{}", help="JSON of extra config overrides (e.g. for a quick test)")
    stamp = datetime.date.today().isoformat()
    p.add_argument("--json", type=Path, default=HERE / "results" / f"cpu-{stamp}-profile-step.json")
    p.add_argument("--md", type=Path, help="Markdown output (default: the JSON path with .md)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("profile", "time", "prepare"), help=argparse.SUPPRESS)
    p.add_argument("--algorithm", help=argparse.SUPPRESS)
    p.add_argument("--warm-start", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        result = {"prepare": prepare, "profile": worker, "time": worker}[args.mode](args)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    warm_start = _run_worker(THIS_TREE, "prepare", args)["warm_start"]
    data: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "preset": PRESET,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_avg_start": os.getloadavg(),
        },
        "settings": {k: getattr(args, k) for k in ("warmup", "steps", "profile_steps", "rounds", "overrides")},
        "tree": _tree_info(THIS_TREE),
    }
    if not args.no_profile:
        variants = _variants(args) if args.compare else {"new": (THIS_TREE, args.overrides)}
        labels = ["new", *(v for v in args.profile_variants if v != "new")]
        unknown = [v for v in labels if v not in variants]
        if unknown:
            raise SystemExit(f"--profile-variants: {unknown} are not variants (known: {', '.join(variants)})")
        profiles: dict[str, dict[str, Any]] = {label: {} for label in labels}
        for label in labels:
            tree, overrides = variants[label]
            for algorithm in args.algorithms:
                got = _run_worker(
                    tree, "profile", args, algorithm=algorithm, warm_start=warm_start, overrides=overrides
                )
                profiles[label][algorithm] = got
                print(f"profiled {label} {algorithm}: {got['step_s_mean'] * 1e3:.1f} ms/step")
        data["profiles"] = profiles.pop("new")
        if profiles:
            data["variant_profiles"] = {"new": data["profiles"], **profiles}
    if args.compare:
        data["comparison"] = compare(args, warm_start)
    data["machine"]["load_avg_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    table = render(data)
    (args.md or args.json.with_suffix(".md")).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
