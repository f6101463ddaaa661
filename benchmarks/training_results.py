"""Collect finished `tokrl train` runs into one results JSON and print the README's markdown table.

    python benchmarks/training_results.py outputs/tiny-multiplication-{t-spmo,s-grpo,grpo} \
        --out benchmarks/results/cpu-<date>-train-tiny-multiplication.json --note "2 cores, solo runs"

Each run directory must hold `results.json` (written at the end of a run) and `metrics.jsonl` (or, as committed
runs keep it, `metrics.jsonl.gz`). Per run the JSON keeps results.json as written plus what the table needs from
the metrics: mean selected and generated tokens per step, mean frac_zero_std, median step time and the eval curve
(every eval record); from the resolved config the seed and thread count, and from `sft/sft_config.json` the warm
start's steps and seconds.

With several runs of one algorithm (seeds, thread counts) the table gives the spread of each algorithm at each
thread count instead: min / median / max of the accuracy before and after, of the change and of the wall time.
`--label 'PATTERN=TEXT'` (repeatable) tags the runs whose folder name matches the glob PATTERN (for example the
CPU code path they were held to: `--label '*-avx2=AVX2'`); tagged runs form their own rows, under a label column.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml


def summarise_run(run_dir: Path) -> dict[str, Any]:
    """results.json of `run_dir` plus per-step means and the eval curve from its metrics.jsonl."""
    results_file, metrics_file = run_dir / "results.json", run_dir / "metrics.jsonl"
    packed = metrics_file.with_name(metrics_file.name + ".gz")
    if not metrics_file.is_file() and packed.is_file():
        metrics_file = packed
    for needed in (results_file, metrics_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: is {run_dir} a finished `tokrl train` output_dir?")
    results = json.loads(results_file.read_text())
    raw = metrics_file.read_bytes()
    text = (gzip.decompress(raw) if metrics_file.suffix == ".gz" else raw).decode()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    if not train:
        raise ValueError(f"{metrics_file} has no train records (was the run started with --log-every > steps?)")
    config = _resolved_config(run_dir)
    completions_per_step = int(config["prompts_per_step"]) * int(config["generation"]["num_generations"])
    per_step = {
        "mean_selected_tokens_per_step": statistics.fmean(r["selected_tokens"] for r in train),
        "mean_generated_tokens_per_step": statistics.fmean(r["completion_len"] for r in train) * completions_per_step,
        "mean_frac_zero_std": statistics.fmean(r["frac_zero_std"] for r in train),
        "median_step_time_s": statistics.median(r["step_time_s"] for r in train),
        "train_records": len(train),
    }
    curve = [{"step": r["step"], "accuracy": r["accuracy"]} for r in records if r["kind"] == "eval"]
    run = {"seed": config.get("seed"), "num_threads": config.get("num_threads"), **_warm_start(run_dir)}
    return {**results, **per_step, **run, "eval_curve": curve}


def _resolved_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config saved with the final checkpoint."""
    configs = sorted(run_dir.glob("checkpoint-*/config.yaml"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not configs:
        raise FileNotFoundError(f"no checkpoint-*/config.yaml in {run_dir}: the resolved config is needed")
    return yaml.safe_load(configs[-1].read_text())


def _warm_start(run_dir: Path) -> dict[str, Any]:
    """Steps and seconds of the run's warm start ({} when it had none)."""
    record = run_dir / "sft" / "sft_config.json"
    if not record.is_file():
        return {}
    data = json.loads(record.read_text())
    return {"warm_start_steps": len(data.get("losses", [])), "warm_start_seconds": data.get("seconds")}


def _spread(values: list[float], unit: str, digits: int = 1, sign: str = "") -> str:
    """'min / median / max' of `values`, each with `unit` (sign '+': signed)."""
    trio = (min(values), statistics.median(values), max(values))
    return " / ".join(f"{v:{sign}.{digits}f}{unit}" for v in trio)


def spread_table(runs: list[dict[str, Any]]) -> str:
    """One row per (algorithm, thread count) over its runs: min / median / max of before, after, change, wall time."""
    labelled = any(run.get("label") for run in runs)
    label_head, label_rule = ("| label ", "|---") if labelled else ("", "")
    lines = [
        f"| algorithm | threads {label_head}| seeds | held-out before | after | change | wall time |",
        f"|---|---:{label_rule}|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, Any, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["algorithm"], run.get("num_threads"), run.get("label", "")), []).append(run)
    for (algorithm, threads, label), group in groups.items():
        seeds = ", ".join(str(r.get("seed")) for r in group)
        before = [100 * r["eval_before"] for r in group]
        after = [100 * r["eval_after"] for r in group]
        change = [b - a for a, b in zip(before, after, strict=True)]
        wall = [r["wall_time_s"] for r in group]
        threads = f"{threads} | {label or '-'}" if labelled else threads
        lines.append(
            f"| {algorithm} | {threads} | {seeds} | {_spread(before, '%')} | {_spread(after, '%')} | "
            f"{_spread(change, ' points', sign='+')} | {_spread(wall, ' s', 0)} |"
        )
    return "\n".join(lines)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| algorithm | held-out accuracy before → after | change | tokens in the loss per step, mean | wall time |",
        "|---|---|---:|---:|---:|",
    ]
    for run in runs:
        before, after = 100 * run["eval_before"], 100 * run["eval_after"]
        lines.append(
            f"| {run['algorithm']} | {before:.1f}% → {after:.1f}% | {after - before:+.1f} points | "
            f"{run['mean_selected_tokens_per_step']:.0f} of {run['mean_generated_tokens_per_step']:.0f} | "
            f"{run['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished output_dir of each run")
    parser.add_argument("--out", type=Path, help="write the collected JSON here")
    parser.add_argument("--note", default="", help="how the runs were made (machine, threads, concurrency)")
    parser.add_argument(
        "--label", action="append", default=[], metavar="PATTERN=TEXT", help="tag runs whose folder name matches"
    )
    args = parser.parse_args(argv)
    labels = []
    for item in args.label:
        pattern, sep, text = item.partition("=")
        if not sep or not pattern or not text:
            parser.error(f"--label: expected PATTERN=TEXT, got {item!r}")
        labels.append((pattern, text))
    import peft
    import torch
    import transformers

    data = {
        "what": "tokrl train runs collected by benchmarks/training_results.py",
        "collected_on": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "note": args.note,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "runs": [],
    }
    for run in args.runs:
        summary = summarise_run(run)
        matching = [text for pattern, text in labels if fnmatch.fnmatch(run.name, pattern)]
        data["runs"].append({**summary, "label": matching[0]} if matching else summary)
    if args.out:
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    several = len({r["algorithm"] for r in data["runs"]}) < len(data["runs"])  # seeds or thread counts
    print(spread_table(data["runs"]) if several else markdown_table(data["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
