"""Learning curves of `tokrl train` runs in one picture: `tokrl plot RUN_DIR [RUN_DIR ...] --out FILE.png`.

Panels, x = RL step: reward mean, held-out accuracy at the eval points, selected tokens per step (the rows
the loss is computed on), step time, and the policy update's peak memory (`update_peak_mem_mib`, only when
a run logs it); a last panel sums each run up (accuracy before -> after, mean selected tokens, median step
time). Per-step curves are noisy: they are drawn faint as logged with a trailing moving average over
`window` steps on top (window stated in the title). One colour per run, labelled by its algorithm.

Everything is read from the run directory: metrics.jsonl (the source of truth) and, for the label,
results.json or else the newest checkpoint-*/config.yaml. matplotlib is optional: `pip install 'tokrl[plot]'`.
"""

from __future__ import annotations

import gzip
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokrl.infra.extras import import_extra

logger = logging.getLogger("tokrl")

FIGURE_PX = (1500, 900)  # width, height of the saved picture in pixels at DPI
DPI = 100
AUTO_WINDOW_POINTS = 50  # the automatic smoothing window leaves about this many independent points per curve


@dataclass(frozen=True)
class Panel:
    """One subplot: `key` of the `kind` records, scaled by `scale`; `optional` panels need a run that logs it;
    `from_zero` keeps 0 on the y axis (sizes and times, where a zoomed axis would exaggerate small changes)."""

    key: str
    kind: str
    title: str
    scale: float = 1.0
    optional: bool = False
    from_zero: bool = False


SELECTED_TOKENS = Panel("selected_tokens", "train", "selected tokens per step (loss rows)", from_zero=True)
STEP_TIME = Panel("step_time_s", "train", "step time (s)", from_zero=True)
PANELS = (
    Panel("reward_mean", "train", "reward mean (training batch)"),
    Panel("accuracy", "eval", "held-out accuracy (%)", scale=100.0),
    SELECTED_TOKENS,
    STEP_TIME,
    Panel("update_peak_mem_mib", "train", "update peak memory (MiB)", optional=True, from_zero=True),
)


@dataclass
class RunCurves:
    """The records of one run directory, split by kind, and its legend label."""

    run_dir: Path
    label: str
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]

    def series(self, panel: Panel) -> tuple[list[int], list[float]]:
        """(steps, values) of `panel` where the value was logged and finite (None in metrics.jsonl is not)."""
        records = self.train if panel.kind == "train" else self.evals
        pairs = [(r["step"], r[panel.key] * panel.scale) for r in records if isinstance(r.get(panel.key), int | float)]
        return [s for s, _ in pairs], [v for _, v in pairs]


def run_label(run_dir: Path) -> str:
    """The run's algorithm from results.json, else from the newest checkpoint's config.yaml, else the folder."""
    results = run_dir / "results.json"
    if results.is_file():
        algorithm = json.loads(results.read_text()).get("algorithm")
        if algorithm:
            return str(algorithm)
    configs = sorted(run_dir.glob("checkpoint-*/config.yaml"), key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
    if configs:
        algorithm = (yaml.safe_load(configs[-1].read_text()) or {}).get("algorithm")
        if algorithm:
            return str(algorithm)
    return run_dir.name


def _record(line: bytes) -> dict[str, Any] | None:
    """The metrics record on one line, or None for anything else (a cut-short line, another JSON value)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int):
        return None
    return record


def load_run(run_dir: str | Path) -> RunCurves:
    """Read `run_dir`/metrics.jsonl (or metrics.jsonl.gz) and the run's label; lines that are not metrics records
    (cut short by a crash, edited by hand) are skipped with one warning naming them."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file() and metrics.with_name("metrics.jsonl.gz").is_file():
        metrics = metrics.with_name("metrics.jsonl.gz")  # as committed runs keep it (benchmarks/results/)
    if not metrics.is_file():
        raise FileNotFoundError(f"run_dir: {str(run_dir)!r} has no metrics.jsonl; expected a `tokrl train` output_dir")
    raw = gzip.decompress(metrics.read_bytes()) if metrics.suffix == ".gz" else metrics.read_bytes()
    records, skipped = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        record = _record(line)
        if record is not None:
            records.append(record)
        elif line.strip():
            skipped.append(number)
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        logger.warning(
            "plot: skipped %d line(s) of %s that are not metrics records (line %s)", len(skipped), metrics, shown
        )
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise ValueError(f"run_dir: {str(metrics)!r} holds no train or eval records")
    return RunCurves(run_dir, run_label(run_dir), train, evals)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean: out[i] = mean(values[max(0, i - window + 1) : i + 1]) (shorter windows at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def auto_window(runs: Sequence[RunCurves]) -> int:
    """About 1/AUTO_WINDOW_POINTS of the longest run's train records (1 = no smoothing for short runs)."""
    longest = max((len(run.train) for run in runs), default=0)
    return max(1, longest // AUTO_WINDOW_POINTS)


def _unique_labels(runs: list[RunCurves]) -> None:
    """Two runs of the same algorithm get their folder name added to the label."""
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.run_dir.name})"


def _summary(run: RunCurves) -> str:
    accuracy = [r["accuracy"] for r in run.evals if isinstance(r.get("accuracy"), int | float)]
    acc = " -> ".join(f"{100 * a:.1f}%" for a in (accuracy[:1] + accuracy[-1:] if len(accuracy) > 1 else accuracy))
    _, selected = run.series(SELECTED_TOKENS)
    _, seconds = run.series(STEP_TIME)
    parts = [f"{run.label}: {len(run.train)} steps", f"held-out accuracy {acc or 'n/a'}"]
    if selected:
        parts.append(f"selected tokens/step {statistics.fmean(selected):.0f} (mean)")
    if seconds:
        parts.append(f"step time {statistics.median(seconds):.3g} s (median)")
    return "\n  ".join(parts)


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, smooth: int = 0) -> Path:
    """Draw the PANELS of every run into `out` (a PNG of FIGURE_PX pixels; the suffix picks the format).

    smooth: moving-average window in steps for the per-step curves; 0 picks `auto_window`, 1 draws them raw.
    Returns the path written (`out`, with ".png" added when it has no suffix).
    """
    if smooth < 0:
        raise ValueError(f"smooth: must be >= 0 (0 = automatic, 1 = as logged), got {smooth}")
    if not run_dirs:
        raise ValueError("run_dirs: expected at least one run directory, got none")
    import_extra("matplotlib", extra="plot", feature="tokrl plot")
    from matplotlib import rcParams
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    if not out.suffix:  # matplotlib would append ".png" itself: name the file that is really written
        out = out.with_name(out.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise ValueError(f"out: unsupported picture format {out.suffix!r}; use one of: {', '.join(sorted(formats))}")

    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    window = smooth or auto_window(runs)
    panels = [p for p in PANELS if not p.optional or any(run.series(p)[0] for run in runs)]
    colors = rcParams["axes.prop_cycle"].by_key()["color"]

    fig = Figure(figsize=(FIGURE_PX[0] / DPI, FIGURE_PX[1] / DPI), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 3)
    cells = [grid[i // 3, i % 3] for i in range(len(panels))]
    for panel, cell in zip(panels, cells, strict=True):
        ax = fig.add_subplot(cell)
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            steps, values = run.series(panel)
            if not steps:
                continue
            if panel.kind == "eval":
                ax.plot(steps, values, marker="o", color=color, label=run.label)
            elif window > 1:
                ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.7)
                ax.plot(steps, moving_average(values, window), color=color, linewidth=1.8, label=run.label)
            else:
                ax.plot(steps, values, color=color, linewidth=1.2, label=run.label)
        if panel.from_zero:
            ax.set_ylim(bottom=0)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel("RL step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    summary = fig.add_subplot(grid[1, len(panels) - 3 :])  # the rest of the bottom row
    summary.axis("off")
    for i, run in enumerate(runs):
        summary.text(
            0.0,
            1.0 - i / max(len(runs), 3),
            _summary(run),
            transform=summary.transAxes,
            va="top",
            fontsize=10,
            family="monospace",
            color=colors[i % len(colors)],
        )
    legend = {label: h for ax in fig.axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(list(legend.values()), list(legend), loc="outside upper right", ncols=len(legend))
    how = f"trailing moving average over {window} steps (faint: as logged)" if window > 1 else "as logged"
    fig.suptitle(f"tokrl learning curves; per-step panels: {how}", fontsize=13, x=0.02, ha="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out
