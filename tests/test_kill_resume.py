"""kill -9 of a resumed run before its first step is logged keeps metrics.jsonl.

The resumed process used to reopen metrics.jsonl with "w" and rewrite the kept lines through a buffer that
was flushed only after the first step: a kill -9 in between left 0 bytes, and the steps up to the checkpoint
were gone for good. Now the file is only ever replaced atomically or appended to. The killed process also
leaves its lock behind, which the next resume takes over.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.trainer_helpers import HashRewardTrainer, small_config

REPO = Path(__file__).resolve().parents[1]
RUN = {"algorithm": "grpo", "steps": 3, "save_every": 2}

KILLED_IN_FIRST_STEP = """
import os, signal, sys
from pathlib import Path
from tests.trainer_helpers import HashRewardTrainer, small_config

class KilledInFirstStep(HashRewardTrainer):
    def __init__(self, config):
        super().__init__(config)
        self.task.reward = lambda completions, **columns: os.kill(os.getpid(), signal.SIGKILL)

KilledInFirstStep(small_config(Path(sys.argv[1]), resume=True, **{run!r})).run()
"""


def test_kill_9_in_the_first_step_after_a_resume_keeps_the_history(tmp_path):
    HashRewardTrainer(small_config(tmp_path, **RUN)).run()
    out = tmp_path / "run"
    shutil.rmtree(out / "checkpoint-3")  # as if the first process had died before its final save
    history = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in history if json.loads(line)["step"] <= 2]
    assert len(kept) < len(history)  # the resume drops steps after checkpoint-2: the file must be replaced

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_FIRST_STEP.format(run=RUN), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "metrics.jsonl").read_text().splitlines(keepends=True) == kept

    result = HashRewardTrainer(small_config(tmp_path, resume=True, **RUN)).run()  # takes over the stale lock
    assert result.steps == 3 and not result.interrupted
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in logged] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("eval", 3),
    ]
