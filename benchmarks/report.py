"""Turn a pytest-benchmark JSON from `pytest benchmarks --benchmark-only --benchmark-json X.json` into Markdown.

    python benchmarks/report.py benchmarks/results/cpu-2026-11-25.json [more.json ...] [--out table.md]

Several JSON files (e.g. the kernel suite and the e2e step run as separate commands) are merged into one
report; the header's date, versions and machine come from the first.

One table per benchmark group (a mode and a shape), providers as columns: the median time, the peak
memory above the inputs, and both as ratios to the naive baseline (naive / provider, so > 1 means faster
or smaller), plus effective TFLOP/s where recorded. Then, for the kernel suite, how each provider's time
scales with the selected fraction. A run whose device is "cpu" is labelled as a CPU run throughout.
Reads only the JSON; no torch import.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PROVIDER_ORDER = ("hf", "naive", "trl_selective", "chunked_torch", "liger", "tokrl")
MISSING = "—"


def load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def merge(runs: list[dict]) -> dict:
    """One run dict holding every benchmark of `runs`; everything else from the first run."""
    merged = dict(runs[0])
    merged["benchmarks"] = [bench for run in runs for bench in run.get("benchmarks", [])]
    return merged


def records(data: dict) -> list[dict]:
    """One flat record per benchmark: its extra_info plus group, name and median milliseconds."""
    out = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        if "provider" not in info:
            continue  # not one of ours
        info["group"] = bench.get("group") or bench.get("name", "")
        info["median_ms"] = bench["stats"]["median"] * 1e3
        info["rounds"] = bench["stats"].get("rounds")
        out.append(info)
    return out


def _provider_key(provider: str) -> tuple[int, str]:
    return (PROVIDER_ORDER.index(provider), "") if provider in PROVIDER_ORDER else (len(PROVIDER_ORDER), provider)


def _baseline(providers: list[str]) -> str | None:
    if "naive" in providers:
        return "naive"
    return next((p for p in providers if p.endswith("_naive")), None)


def _num(x: float | None) -> str:
    if x is None:
        return MISSING
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _ratio(base: float | None, value: float | None) -> str:
    if base is None or value is None or value <= 0:
        return MISSING
    return f"{base / value:.2f}x"


def _share(value: float | None, base: float | None) -> str:
    return f" ({value / base:.0%})" if value is not None and base else ""


def _is_cpu(recs: list[dict]) -> bool:
    return bool(recs) and all(str(r.get("device", "")).lower() == "cpu" for r in recs)


def header(data: dict, recs: list[dict]) -> list[str]:
    devices = sorted({str(r.get("device")) for r in recs}) or ["unknown"]
    cpu = _is_cpu(recs)
    date = str(data.get("datetime", ""))[:10] or "unknown date"
    first = recs[0] if recs else {}
    machine = data.get("machine_info", {})
    cpu_info = machine.get("cpu", {}) if isinstance(machine.get("cpu"), dict) else {}
    commit = data.get("commit_info", {}) or {}
    title = "CPU run (small shapes; not GPU figures)" if cpu else ", ".join(devices)
    lines = [
        f"## tokrl benchmarks: {title}",
        "",
        f"- device: {', '.join(devices)}"
        + (f" ({cpu_info.get('brand_raw', '?')}, {cpu_info.get('count', '?')} cores)" if cpu else ""),
        f"- date: {date}; torch {first.get('torch_version', '?')}; triton {first.get('triton_version') or 'n/a'}; "
        f"pytest-benchmark {data.get('version', '?')}"
        + (f"; commit {str(commit.get('id', ''))[:9]}{' (dirty)' if commit.get('dirty') else ''}" if commit else ""),
        "- time: median over rounds (ms); memory: peak MiB allocated above the inputs; "
        "`x naive` = naive / provider, so above 1 is faster or smaller.",
    ]
    if cpu:
        threads = machine.get("torch_threads")
        lines.append(
            "- CPU: small shapes in fp32 with the PyTorch providers only (liger and tokrl's Triton kernels are "
            f"timed on CUDA); {threads or '?'} torch thread(s) on a shared machine, so times are indicative. "
            "Peak memory is traced with torch.profiler (torch tensors only). GPU figures are reported separately."
        )
    return lines


def group_table(group: str, recs: list[dict]) -> list[str]:
    by_provider = {r["provider"]: r for r in recs}
    providers = sorted(by_provider, key=_provider_key)
    base = by_provider.get(_baseline(providers) or "")
    rows: list[tuple[str, list[str]]] = [("median ms", [_num(by_provider[p]["median_ms"]) for p in providers])]
    if base:
        rows.append(("x naive (time)", [_ratio(base["median_ms"], by_provider[p]["median_ms"]) for p in providers]))
    rows.append(("peak MiB", [_num(by_provider[p].get("peak_mem_mib")) for p in providers]))
    if base:
        rows.append(
            (
                "x naive (memory)",
                [_ratio(base.get("peak_mem_mib"), by_provider[p].get("peak_mem_mib")) for p in providers],
            )
        )
    for key, label in (("tokens_per_s", "tokens/s"), ("ms_per_step", "ms per decode step")):  # sampler runs
        if any(by_provider[p].get(key) is not None for p in providers):
            rows.append((label, [_num(by_provider[p].get(key)) for p in providers]))
    if any(by_provider[p].get("tflops") is not None for p in providers):
        rows.append(("TFLOP/s (effective)", [_num(by_provider[p].get("tflops")) for p in providers]))
    if any(by_provider[p].get("forward_tokens") is not None for p in providers):
        base_tokens = base.get("forward_tokens") if base else None
        rows.append(
            (
                "forward tokens (share of naive)",
                [
                    _num(by_provider[p].get("forward_tokens"))
                    + _share(by_provider[p].get("forward_tokens"), base_tokens)
                    for p in providers
                ],
            )
        )
    if len({by_provider[p].get("n_selected") for p in providers}) > 1:
        rows.append(("selected rows", [str(by_provider[p].get("n_selected", MISSING)) for p in providers]))
    lines = [f"### {group}", "", "| | " + " | ".join(providers) + " |", "|---|" + "---:|" * len(providers)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


def scaling_table(recs: list[dict]) -> list[str]:
    """Kernel rows: each provider's time at every selected fraction, and as a share of its 100% time."""
    shapes: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        if r.get("mode") in ("fwd", "fwd_bwd"):
            head = {True: " head trained", False: " head frozen"}.get(r.get("head_grad"), "")
            shapes[(r["mode"], r["n_rows"], r["hidden"], r["vocab"], r["dtype"], head)].append(r)
    lines: list[str] = []
    for (mode, n_rows, hidden, vocab, dtype, head), rs in sorted(shapes.items(), key=lambda kv: kv[0][:2] + kv[0][5:]):
        ks = sorted({r["n_selected"] for r in rs}, reverse=True)
        if len(ks) < 2:
            continue
        cell = {(r["provider"], r["n_selected"]): r["median_ms"] for r in rs}
        providers = sorted({r["provider"] for r in rs}, key=_provider_key)
        lines += [
            f"### time vs selected rows: {mode} N={n_rows} D={hidden} V={vocab} {dtype}{head}",
            "",
            "median ms (share of the same provider's time at the most rows)",
            "",
            "| provider | " + " | ".join(f"k={k} ({100 * k / n_rows:.0f}%)" for k in ks) + " |",
            "|---|" + "---:|" * len(ks),
        ]
        for p in providers:
            full = cell.get((p, ks[0]))
            cells = []
            for k in ks:
                ms = cell.get((p, k))
                share = f" ({ms / full:.0%})" if ms is not None and full else ""
                cells.append(_num(ms) + share)
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1] if lines else lines


def render(data: dict) -> str:
    recs = records(data)
    if not recs:
        return "No tokrl benchmarks in this file.\n"
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        groups[r["group"]].append(r)

    def order(item: tuple[str, list[dict]]) -> tuple:
        r = item[1][0]
        kernel = r.get("mode") in ("fwd", "fwd_bwd")
        return (not kernel, str(r.get("mode")), r.get("n_rows") or 0, -(r.get("n_selected") or 0), item[0])

    lines = header(data, recs)
    for group, rs in sorted(groups.items(), key=order):
        lines += [""] + group_table(group, rs)
    scaling = scaling_table(recs)
    if scaling:
        lines += [""] + scaling
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    parser.add_argument("--out", help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    text = render(merge([load(path) for path in args.json]))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
