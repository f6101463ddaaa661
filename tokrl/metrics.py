"""Step metrics: JSON lines in `output_dir/metrics.jsonl`, a tqdm progress bar, and small summaries.

Every record is one JSON object per line with a `step` and a `kind` ("train" or "eval"); a resumed run
appends to the same file. Keys of a train record (all per step):
    reward_mean, reward_std      over the valid rewards of the batch (None rewards left out)
    frac_zero_std                groups whose valid rewards are all equal (no learning signal)
    completion_len               mean new tokens per completion; prefix_len: mean replay prefix length
    selected_tokens              loss rows the algorithm selected (before any forward)
    loss, grad_norm, clip_frac   the optimised loss (last iteration), pre-clip gradient norm, PPO clipped rows
    kl                           mean k3 KL to the adapter-free model over the loss rows (beta > 0 only)
    forward_tokens               tokens the loss forward ran over (prompt + completion up to each row's last
                                 selected position, all micro-batches; what the update's activations scale with)
    gen_peak_mem_mib             peak memory of sampling the step's rollouts
    update_peak_mem_mib          peak memory of the update: reference log-probs, loss forward(s), backward(s),
                                 optimiser step (reset just before it)
    peak_mem_mib                 the larger of the two: the step's peak
Memory on CUDA is the caching allocator's peak allocated bytes (torch.cuda.max_memory_allocated, weights
included) since the phase began. On CPU it is the process's peak resident set size (VmHWM) since the phase
began, reset through /proc/self/clear_refs on Linux: it counts everything the process holds (Python, the
model, libraries), not tensors alone. Where that reset is not available (not Linux) it is the peak since the
process started (ru_maxrss), which never decreases.
In a multi-process run every value is over the global batch (rank 0 writes; step_time_s is rank 0's,
gen_tokens_per_s is all ranks' tokens over the slowest rank's generate time, memory the largest rank's).
    lr, step_time_s, gen_tokens_per_s
    gen_seconds, update_seconds  the step's rollout half (sampling, rewards, selection) and optimisation half
                                 (loss forward/backward, optimiser); together about step_time_s
    sampler_graphed              share of the tokrl sampler's decode steps replayed from a CUDA graph (the
                                 lowest rank's); below 1 means a capture failed and those steps ran eagerly
                                 (~20x slower, with a warning each time); None on CPU and with hf
Sampler fidelity, on the tokens the loss selected (None when the sampler gives no log-probs, e.g. hf):
    sampler_logp_gap_mean, sampler_logp_gap_p95   mean and 95th percentile of |logp_sampler - logp_loss|
    sampler_ratio_outside   fraction of exp(logp_loss - logp_sampler) outside [0.9, 1.1]
    logp_sampler is log softmax(logits / T) of the token when it was drawn (eval mode, no dropout);
    logp_loss is the loss's first-iteration log-prob of the same token from the same weights. The loss
    forward runs in train mode, so with lora_dropout > 0 the gap is NOT zero even for an exact sampler: it
    measures dropout noise plus any sampler error (bf16 rounding, a different attention kernel). With
    lora_dropout = 0 in fp32 it is rounding only (~1e-6).
Every record written here also goes to the run's reporters (tokrl/reporting.py: TensorBoard, wandb).
"""

from __future__ import annotations

import json
import math
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from tokrl.infra.atomic import write_lines_atomic

if TYPE_CHECKING:
    from tokrl.reporting import Reporter


def reward_stats(rewards: Sequence[float | None]) -> tuple[float, float]:
    """(mean, population std) of the valid rewards; (nan, nan) when there are none."""
    valid = [float(r) for r in rewards if r is not None]
    if not valid:
        return math.nan, math.nan
    try:
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))
        if math.isfinite(mean) and math.isfinite(std):
            return mean, std
    except OverflowError:
        pass
    # Rewards near the float limit (+-1e308) overflow the plain sums: the same statistics on rewards / scale.
    scale = max(abs(r) for r in valid)
    scaled = [r / scale for r in valid]
    mean = math.fsum(scaled) / len(scaled)
    return mean * scale, math.sqrt(math.fsum((r - mean) ** 2 for r in scaled) / len(scaled)) * scale


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mib`: the CUDA allocator's peak, or the process's RSS peak (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # not Linux, or not permitted: the peak stays the process's lifetime peak (see the module doc)


RATIO_BAND = (0.9, 1.1)


def sampler_logp_gaps(
    sampler_logp: Sequence[Sequence[float]] | None, rows: Any, loss_logp: torch.Tensor
) -> list[float] | None:
    """|logp_sampler - logp_loss| per selected token: sampler_logp[row][position] against loss_logp [k]
    (aligned with the LossRows `rows`); None when the sampler gave no log-probs."""
    if sampler_logp is None:
        return None
    if len(rows) == 0:
        return []
    sampled = torch.tensor([sampler_logp[b][t] for b, t in zip(rows.row.tolist(), rows.position.tolist(), strict=True)])
    return (loss_logp.double() - sampled.double()).tolist()  # [k] signed: logp_loss - logp_sampler


def sampler_gap_stats(gaps: Sequence[float] | None) -> dict[str, float | None]:
    """The sampler fidelity metrics (module docstring) from signed gaps logp_loss - logp_sampler."""
    if not gaps:
        return {"sampler_logp_gap_mean": None, "sampler_logp_gap_p95": None, "sampler_ratio_outside": None}
    delta = torch.tensor(list(gaps), dtype=torch.float64)  # [k]
    ratio = delta.exp()  # [k]
    outside = (ratio < RATIO_BAND[0]) | (ratio > RATIO_BAND[1])  # [k]
    return {
        "sampler_logp_gap_mean": float(delta.abs().mean()),
        "sampler_logp_gap_p95": float(delta.abs().quantile(0.95)),
        "sampler_ratio_outside": float(outside.double().mean()),
    }


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB since `reset_peak_memory(device)`: CUDA allocated bytes, else the process's RSS peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to Python numbers, non-finite floats to None."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFileError(ValueError):
    """A metrics.jsonl line is not a metrics record; the message names the file, the line and the way out."""


def read_metrics_lines(path: Path) -> list[tuple[int, str]]:
    """(step, line) of every record in an existing metrics file, lines ending in a newline ([] when absent).

    A last line without its newline that does not parse is a write cut short by a crash and is dropped;
    any other line that is not a JSON object with an integer `step` raises MetricsFileError."""
    if not path.is_file():
        return []
    raw = path.read_bytes().split(b"\n")
    unterminated = raw.pop()  # b"" when the file ends with a newline
    out = []
    for number, data in enumerate(raw, start=1):
        if data.strip():
            out.append((_record_step(path, number, data), data.decode("utf-8") + "\n"))
    if unterminated.strip():
        try:
            out.append((_record_step(path, len(raw) + 1, unterminated), unterminated.decode("utf-8") + "\n"))
        except MetricsFileError:
            pass
    return out


def _record_step(path: Path, number: int, data: bytes) -> int:
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except json.JSONDecodeError as err:
        problem = f"is not valid JSON ({err.msg})"
    else:
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            return step
        problem = "is not a metrics record (a JSON object with an integer 'step')"
    shown = data[:60].decode("utf-8", errors="replace")
    raise MetricsFileError(
        f"metrics file {str(path)!r}, line {number} {problem}: {shown!r}; repair or delete that line (the file "
        "is the run's own log), then run again"
    )


def records_until(path: Path, step: int) -> list[str]:
    """Lines of an existing metrics file whose step is <= `step` (MetricsFileError for a damaged line)."""
    return [line for record_step, line in read_metrics_lines(path) if record_step <= step]


class MetricsLog:
    """Writes records to `path` and drives an optional progress bar (shown only on a terminal).

    The file is only ever appended to or replaced atomically (tokrl.infra.atomic), so a kill -9 at any moment
    leaves either the old history or the new one. resume_step: 0 starts a fresh file; s > 0 keeps the
    records up to step s (a run resumed from checkpoint-s drops what an interrupted process logged after
    that checkpoint, by an atomic replace) and appends. history: the metrics file those kept records come
    from when it is another run's (a run continued from another run's checkpoint); default `path` itself.
    enabled: False (ranks other than 0 of a multi-process run) writes nothing and shows no bar.
    reporters: backends that get every written record too (opened with the same resume_step); closed here.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        total: int,
        initial: int = 0,
        resume_step: int = 0,
        progress: bool = True,
        enabled: bool = True,
        reporters: Sequence[Reporter] = (),
        history: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._reporters = list(reporters)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = records_until(Path(history or self.path), resume_step) if resume_step > 0 else []
        if not self.path.is_file() or self.path.read_bytes() != "".join(kept).encode("utf-8"):
            write_lines_atomic(self.path, kept)
        self._file = self.path.open("a", encoding="utf-8")
        show = progress and sys.stderr.isatty()
        self._bar = tqdm(total=total, initial=initial, disable=not show, desc="rl", unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        for reporter in self._reporters:
            reporter.log(clean)

    def advance(self, record: dict[str, Any]) -> None:
        """One finished step: move the bar and show reward and loss."""
        if not self.enabled:
            return
        self._bar.update(1)
        postfix = {k: record.get(k) for k in ("reward_mean", "loss") if isinstance(record.get(k), float)}
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._file.close()
        for reporter in self._reporters:
            reporter.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
