"""One run per output directory: the lock refuses a second live run, is released on exit, and a lock left by a
killed process is taken over. Two `tokrl train` processes started together into one directory used to both
"succeed", interleaving metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer_helpers import HashRewardTrainer, small_config
from tokrl.run.run_lock import LOCK_FILE, OutputDirBusyError, RunLock

REPO = Path(__file__).resolve().parents[1]


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    first.acquire()
    holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(OutputDirBusyError, match=rf"is in use by another tokrl run \(pid {os.getpid()} on host "):
        second.acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    second.acquire()  # free again
    second.release_and_tidy()
    assert (tmp_path / "run").is_dir()  # it existed before `second` took the lock: not second's to remove


def test_release_and_tidy_removes_only_a_directory_it_created(tmp_path):
    lock = RunLock(tmp_path / "new")
    lock.acquire()
    lock.release_and_tidy()
    assert not (tmp_path / "new").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tokrl.run.run_lock import RunLock; lock = RunLock(sys.argv[1]); "
            "lock.acquire(); print('locked', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputDirBusyError, match=f"pid {holder.pid} "):
        RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (tmp_path / LOCK_FILE).is_file()  # left behind: the process never released it
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        lock.acquire()
    assert f"taking over the lock of pid {holder.pid}" in caplog.text and "that run is gone" in caplog.text
    lock.release()


def test_a_second_trainer_is_refused_while_the_first_holds_the_dir(tmp_path):
    first = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=1))
    first.setup()  # holds the lock from here until run() returns
    second = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=1))  # dir still looks empty
    with pytest.raises(OutputDirBusyError, match="in use by another tokrl run"):
        second.setup()
    first.run()
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released on exit
    with pytest.raises(ValueError, match="already holds a run"):  # and the plan is made again under the lock
        second.setup()


@pytest.mark.slow
def test_two_processes_started_together_one_wins(tmp_path):
    out = tmp_path / "run"
    # A short warm start widens the window between the output-dir check and the first write, where the two
    # used to pass each other (both exited 0, metrics.jsonl held a corrupt line).
    args = [
        sys.executable,
        "-m",
        "tokrl",
        "train",
        "--output-dir",
        str(out),
        "--sft-steps",
        "5",
        "--sft-batch-size",
        "4",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "4",
        "--max-new-tokens",
        "4",
        "--eval-size",
        "4",
        "--eval-batch-size",
        "4",
        "--num-threads",
        "1",
        "--progress",
        "false",
        "--task-options",
        "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "in use by another tokrl run" in loser or "already holds a run" in loser, loser
    lines = (out / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]  # every line parses: nothing interleaved
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2]
    assert not (out / LOCK_FILE).exists()


def test_without_flock_the_file_is_the_lock_and_a_dead_holder_is_detected(tmp_path, monkeypatch, caplog):
    import socket

    import tokrl.run.run_lock as run_lock

    monkeypatch.setattr(run_lock, "fcntl", None)  # as on Windows
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(OutputDirBusyError, match=f"pid {os.getpid()} "):  # a live holder on this host
        RunLock(tmp_path).acquire()
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))  # left by a process that no longer runs
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        lock.acquire()
    assert f"removing the stale lock of pid {holder['pid']}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
