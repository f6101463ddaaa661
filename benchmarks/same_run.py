"""Do two source trees train the same thing? `tokrl train` in each, then the runs compared bit for bit.

    python benchmarks/same_run.py --base /work/wt/speed-base --steps 30 -- --model outputs/profile-step/sft \
        --sft-steps 0 --eval-size 200

Per algorithm, `python -m tokrl train --algorithm A --steps N --output-dir ... --overwrite [args after --]` runs
once with PYTHONPATH=<this tree> and once with PYTHONPATH=<base>, one after the other. Then:
- adapter_model.safetensors and algorithm_state.json of the final checkpoint: the same bytes; rng_state.pt: the
  same torch generator states (Python's and numpy's global states are seeded from the OS in every process and
  never used by training, so they differ between any two runs);
- optimizer.pt: the same state tensors and hyperparameters (the `foreach` flag may differ: it selects an
  implementation, not a value);
- metrics.jsonl: the same records once wall times, throughput and memory (which differ between any two runs)
  are dropped; results.json: the same accuracies.
Exit status 1 when anything differs; the report names what.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

THIS_TREE = Path(__file__).resolve().parent.parent
# Keys that measure the machine, not the training: they differ between two runs of one tree.
VOLATILE = {"seconds", "gen_seconds", "update_seconds", "step_time_s", "gen_tokens_per_s", "wall_time_s"}
VOLATILE_SUFFIXES = ("_mem_mib",)
IMPLEMENTATION_ONLY = {"foreach"}  # optimizer param_group options that pick a kernel, not a result
UNSEEDED_RNG = {"python", "numpy"}  # rng_state.pt entries seeded from the OS in every process


def _train(tree: Path, algorithm: str, steps: int, out: Path, extra: list[str]) -> Path:
    command = [
        sys.executable,
        "-m",
        "tokrl",
        "train",
        "--algorithm",
        algorithm,
        "--steps",
        str(steps),
        "--output-dir",
        str(out),
        "--overwrite",
        "--progress",
        "false",
        *extra,
    ]
    done = subprocess.run(
        command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"tokrl train failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return out


def _records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    drop = lambda k: k in VOLATILE or k.endswith(VOLATILE_SUFFIXES)  # noqa: E731
    return [{k: v for k, v in json.loads(line).items() if not drop(k)} for line in lines if line.strip()]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _same_optimizer(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    groups = [
        [{k: v for k, v in g.items() if k not in IMPLEMENTATION_ONLY} for g in s["param_groups"]] for s in (sa, sb)
    ]
    if groups[0] != groups[1] or sa["state"].keys() != sb["state"].keys():
        return False
    for key, state in sa["state"].items():
        other = sb["state"][key]
        if state.keys() != other.keys() or not all(torch.equal(state[k], other[k]) for k in state):
            return False
    return True


def compare_runs(new: Path, base: Path) -> list[str]:
    """What differs between two finished run directories (empty when they trained the same thing)."""
    diffs = []
    checkpoints = [sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1] for run in (new, base)]
    for name in ("adapter_model.safetensors", "algorithm_state.json"):
        if (checkpoints[0] / name).read_bytes() != (checkpoints[1] / name).read_bytes():
            diffs.append(f"{checkpoints[0].name}/{name} bytes")
    rng = [torch.load(c / "rng_state.pt", weights_only=False) for c in checkpoints]
    for key in sorted((rng[0].keys() | rng[1].keys()) - UNSEEDED_RNG):
        if key not in rng[0] or key not in rng[1] or not _equal(rng[0][key], rng[1][key]):
            diffs.append(f"{checkpoints[0].name}/rng_state.pt {key}")
    if not _same_optimizer(checkpoints[0] / "optimizer.pt", checkpoints[1] / "optimizer.pt"):
        diffs.append(f"{checkpoints[0].name}/optimizer.pt state")
    records = [_records(run) for run in (new, base)]
    if len(records[0]) != len(records[1]):
        diffs.append(f"metrics.jsonl: {len(records[0])} vs {len(records[1])} records")
    for a, b in zip(*records, strict=False):
        if a != b:
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            diffs.append(f"metrics.jsonl {a.get('kind')} step {a.get('step')}: {', '.join(keys)}")
    results = [json.loads((run / "results.json").read_text()) for run in (new, base)]
    for key in ("eval_before", "eval_after", "steps"):
        if results[0][key] != results[1][key]:
            diffs.append(f"results.json {key}: {results[0][key]} vs {results[1][key]}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other source tree (e.g. a worktree of main)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--algorithms", nargs="+", default=["t-spmo", "s-grpo", "grpo"])
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder (default: a temporary one)")
    parser.add_argument("extra", nargs="*", help="more `tokrl train` arguments (after --)")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="same-run-"))
    failed = False
    for algorithm in args.algorithms:
        runs = {
            name: _train(tree, algorithm, args.steps, root / name / algorithm, args.extra)
            for name, tree in (("new", THIS_TREE), ("base", args.base.resolve()))
        }
        diffs = compare_runs(runs["new"], runs["base"])
        after = json.loads((runs["new"] / "results.json").read_text())
        summary = f"eval {after['eval_before']} -> {after['eval_after']}, {args.steps} steps"
        print(f"{algorithm}: {'SAME' if not diffs else 'DIFFERENT'} ({summary})")
        for diff in diffs:
            print(f"  differs: {diff}")
        failed |= bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
