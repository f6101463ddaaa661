"""The first minutes of a GPU lease, as one command: sections in order, each in a subprocess with its own time limit.

    python benchmarks/gpu_check.py [--out DIR] [--budget SECONDS] [--only NAME ...]

Writes DIR/gpu_check.json (DIR: --out, else $OUT, else ./gpu_check_out) after every section, atomically, so a run
cut off by the lease still leaves valid JSON with what it measured; the sections' own files sit beside it.
Sections (a section needing CUDA records "skipped: no CUDA" without one; the last runs only if time remains):

1. gpu_tests     `pytest tests -m gpu -x -q` with TRITON_PRINT_AUTOTUNING=1: pass/fail/skip counts, the configs
                 the autotuner chose (kernel, key, config, seconds), the failures' lines.
2. sampler       `python benchmarks/sampler_check.py --out DIR/sampler.json --max-seconds S` (the sampler's own
                 check); its JSON is merged in when it wrote one.
3. kernel_4096   `python benchmarks/kernel_check.py` at N = k = 4096, D = 1536, V = 151936, bf16, frozen and trained
                 head: forward / backward / per-kernel times, autotune choices, registers and spills, errors.
4. kernel_512    the same at k = 512 for fp32 hidden + bf16 head and for bf16 / bf16, one call each.
5. bench_4096    `pytest benchmarks/test_linear_pg_loss.py -k "N4096 and (tokrl or naive)" --benchmark-only` with
                 its JSON in DIR/bench_4096.json (only if at least `min_s` of the budget is left).

The JSON: {"device", "versions", "budget_s", "started", "sections": {name: {"status": ok | failed | timeout |
skipped: <why>, "rc", "seconds", "limit_s", "command", "result", "output_tail"}}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAIL_CHARS = 6000
# Autotuner lines (TRITON_PRINT_AUTOTUNING=1): "Triton autotuning for function NAME,\nwith key as KEY,\n
# finished after 1.23s,\nbest config selected: CONFIG;"
_AUTOTUNE = re.compile(
    r"Triton autotuning for function (\S+?),\s*with key as (.*?),\s*finished after ([\d.]+)s,\s*"
    r"best config selected: (.*?);",
    re.S,
)
_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


@dataclass
class Section:
    """One step of the plan: `command(out_dir, limit_s)` is run with `env` under `limit_s`; `parse(output,
    out_dir)` turns its output (and any file it wrote) into the section's result."""

    name: str
    command: Callable[[Path, float], list[str]]
    limit_s: float
    needs_cuda: bool = True
    min_s: float = 0.0  # run only if this much of the budget is left (0: always, cut to what is left)
    needs_file: Path | None = None  # skipped (with the reason) when this file is missing
    env: dict[str, str] = field(default_factory=dict)
    parse: Callable[[str, Path], dict] = lambda output, out_dir: {}


def parse_pytest(output: str, out_dir: Path) -> dict:
    """Counts from pytest's summary line, the autotuner's choices, and the FAILED/ERROR lines."""
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    counts = {}
    for number, word in _COUNTS.findall(summary[-1] if summary else ""):
        counts["errors" if word.startswith("error") else word] = int(number)
    autotuned = [
        {"kernel": name, "key": key.strip(), "seconds": float(sec), "config": config.strip()}
        for name, key, sec, config in _AUTOTUNE.findall(output)
    ]
    failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))][:30]
    return {"counts": counts, "autotuned": autotuned, "failures": failures}


def _json_file(name: str) -> Callable[[str, Path], dict]:
    def parse(output: str, out_dir: Path) -> dict:
        path = out_dir / name
        if not path.exists():
            return {"file": None}
        try:
            return {"file": str(path), "data": json.loads(path.read_text())}
        except json.JSONDecodeError as exc:
            return {"file": str(path), "error": f"unreadable JSON: {exc}"}

    return parse


def _bench_parse(output: str, out_dir: Path) -> dict:
    result = parse_pytest(output, out_dir)
    path = out_dir / "bench_4096.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            result["medians_ms"] = {b["name"]: round(b["stats"]["median"] * 1e3, 4) for b in data.get("benchmarks", [])}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            result["bench_json_error"] = str(exc)
    return result


def _sampler_command(out_dir: Path, limit_s: float) -> list[str]:
    script = ROOT / "benchmarks" / "sampler_check.py"
    # A little under the limit: the script stops starting parts when its own budget is spent.
    return [sys.executable, str(script), "--out", str(out_dir / "sampler.json"), "--max-seconds", f"{limit_s - 15:.0f}"]


def _kernel_command(*extra: str) -> Callable[[Path, float], list[str]]:
    def command(out_dir: Path, limit_s: float) -> list[str]:
        name = "kernel_512.json" if "512" in extra else "kernel_4096.json"
        return [sys.executable, str(ROOT / "benchmarks" / "kernel_check.py"), "--out", str(out_dir / name), *extra]

    return command


def default_sections() -> list[Section]:
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    return [
        # -s: the autotuner prints from inside the tests, which pytest would otherwise capture.
        Section(
            "gpu_tests",
            lambda d, s: [*pytest, "tests", "-m", "gpu", "-x", "-q", "-s"],
            240,
            env={"TRITON_PRINT_AUTOTUNING": "1"},
            parse=parse_pytest,
        ),
        Section(
            "sampler",
            _sampler_command,
            180,
            parse=_json_file("sampler.json"),
            needs_file=ROOT / "benchmarks" / "sampler_check.py",
        ),
        Section(
            "kernel_4096",
            _kernel_command("--k", "4096", "--dtypes", "bf16/bf16", "--heads", "frozen,trained"),
            150,
            parse=_json_file("kernel_4096.json"),
        ),
        Section(
            "kernel_512",
            _kernel_command("--k", "512", "--dtypes", "fp32/bf16,bf16/bf16", "--heads", "trained", "--reps", "3"),
            90,
            parse=_json_file("kernel_512.json"),
        ),
        Section(
            "bench_4096",
            lambda d, s: [
                *pytest,
                "benchmarks/test_linear_pg_loss.py",
                "-k",
                "N4096 and (tokrl or naive)",
                "--benchmark-only",
                "-q",
                "--benchmark-json",
                str(d / "bench_4096.json"),
            ],
            300,
            min_s=90,
            parse=_bench_parse,
        ),
    ]


def _environment() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["has_cuda"] = torch.cuda.is_available()
    except Exception as exc:  # the JSON must still be written
        info["torch_error"] = repr(exc)
        info["has_cuda"] = False
    for module in ("triton", "transformers", "peft"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    return info


def write_json(path: Path, report: dict) -> None:
    """Atomically: a reader (or a lease cut mid-write) sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def run_section(section: Section, out_dir: Path, limit_s: float, has_cuda: bool) -> dict:
    if section.needs_cuda and not has_cuda:
        return {"status": "skipped: no CUDA"}
    if section.needs_file is not None and not section.needs_file.exists():
        return {"status": f"skipped: {section.needs_file.relative_to(ROOT)} not found"}
    command = section.command(out_dir, limit_s)
    record = {"command": command, "limit_s": round(limit_s, 1)}
    env = {**os.environ, **section.env, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    try:
        output, record["rc"] = _run(command, env, limit_s)
        record["status"] = "ok" if record["rc"] == 0 else ("timeout" if record["rc"] is None else "failed")
    except OSError as exc:  # the command could not start
        output, record["status"], record["rc"] = repr(exc), "failed", None
    record["seconds"] = round(time.monotonic() - start, 1)
    try:
        record["result"] = section.parse(output, out_dir)
    except Exception as exc:  # a parser bug must not lose the section's output
        record["result"] = {"parse_error": repr(exc)}
    record["output_tail"] = output[-TAIL_CHARS:]
    return record


def _run(command: list[str], env: dict, limit_s: float) -> tuple[str, int | None]:
    """(stdout + stderr, return code or None on timeout). The command runs in its own process group, killed as a
    whole at the limit: no child (a pytest worker, a sampler subprocess) is left holding the GPU."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=limit_s)
        return output, proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return output, None


def run_all(sections: list[Section], out_dir: Path, budget_s: float, has_cuda: bool | None = None) -> dict:
    """Run `sections` in order within `budget_s`, writing out_dir/gpu_check.json after each; returns the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    env = _environment()
    has_cuda = env.get("has_cuda", False) if has_cuda is None else has_cuda
    report = {
        "device": env.get("device"),
        "versions": env,
        "budget_s": budget_s,
        "started": time.ctime(),
        "sections": {s.name: {"status": "pending"} for s in sections},
    }
    write_json(path, report)
    deadline = time.monotonic() + budget_s
    for section in sections:
        left = deadline - time.monotonic()
        if left <= max(section.min_s, 1.0) and not (section.needs_cuda and not has_cuda):
            report["sections"][section.name] = {"status": f"skipped: {left:.0f} s of the budget left"}
        else:
            report["sections"][section.name] = run_section(section, out_dir, min(section.limit_s, left), has_cuda)
        write_json(path, report)
    report["finished"] = time.ctime()
    write_json(path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all sections (default 9 min)")
    parser.add_argument("--only", nargs="+", help="run only these sections (names as in the docstring)")
    args = parser.parse_args(argv)
    sections = [s for s in default_sections() if not args.only or s.name in args.only]
    report = run_all(sections, args.out, args.budget)
    for name, record in report["sections"].items():
        print(f"{name:12} {record['status']:28} {record.get('seconds', '')}")
    print(f"wrote {args.out / 'gpu_check.json'}")
    statuses = [record["status"] for record in report["sections"].values()]
    return 0 if all(status == "ok" or status.startswith("skipped") for status in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
