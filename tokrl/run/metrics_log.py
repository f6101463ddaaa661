"""The metrics file: JSON lines in `output_dir/metrics.jsonl`, a tqdm progress bar, and the run's reporters.

Every record is one JSON object per line with a `step` and a `kind` ("train" or "eval"; the keys of a train
record: `tokrl.stages.record`); a resumed run appends to the same file. Every record written here also goes to
the run's reporters (`tokrl.infra.reporting`: TensorBoard, wandb).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from tokrl.infra import distributed
from tokrl.infra.atomic import write_lines_atomic
from tokrl.infra.reporting import build_reporters

if TYPE_CHECKING:
    from tokrl.infra.reporting import Reporter


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

    @classmethod
    def for_run(cls, config: Any, path: Path, step: int, history: str | Path | None) -> MetricsLog:
        """The metrics log of a run (`config`: its TrainConfig) starting or resuming at `step`: rank 0 writes it
        and opens the report_to backends; the other ranks write nothing."""
        main = distributed.is_main()
        reporters = (
            build_reporters(config.report_to, path.parent, config=config.to_dict(), resume_step=step) if main else []
        )
        return cls(
            path,
            total=config.steps,
            initial=step,
            resume_step=step,
            progress=config.progress,
            enabled=main,
            reporters=reporters,
            history=history,
        )

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
