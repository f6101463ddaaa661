"""Data-parallel training on CPU with gloo: two torchrun processes against one process.

The runs use the `custom` task on a small JSONL file with a reward that hashes the completion text (the
tiny model starts from random weights, so a real reward would be 0 everywhere and nothing would train).
`sample_per_prompt` makes prompt j's completions independent of which rank samples them and
lora_dropout=0 removes the per-rank dropout masks, so the two-process run must produce the adapter of the
one-process run with the same seed and global batch, up to fp32 rounding. The same file checks that a
SIGTERM on one rank stops both after the same step and the checkpoint resumes bit for bit, that a reward
error on one rank stops every rank with the last good step saved (and that checkpoint resumes bit for bit),
that a rank that raises brings the job down with its rank in the message, and the batch arithmetic check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tokrl.config import load_config
from tokrl.infra.distributed import check_world_size, fail_together, launch_env
from tokrl.run.resume import missing_files
from tokrl.trainer import Trainer

REWARD_MODULE = """
import os
import signal
import zlib

def hash_reward(completions, **columns):
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]


def rank1_fails(completions, **columns):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("reward server unreachable")
    return hash_reward(completions)


def rank1_interrupted(completions, **columns):
    # Once per directory, not per process: the resumed run uses this same reward (a resume must keep the
    # config) and must not be stopped again.
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interrupted.flag")
    if os.environ.get("RANK") == "1" and len(completions) == 8 and not os.path.exists(marker):  # step 1
        open(marker, "w").close()
        signal.raise_signal(signal.SIGTERM)  # only rank 1 is told to stop
    return hash_reward(completions)


TRAIN_CALLS = []


def rank1_fails_at(completions, **columns):
    # Raises on rank 1 at training step DISTREWARD_FAIL_AT of this process (a step scores 2 prompts x 4
    # completions per rank; an evaluation 2). The resumed run keeps this reward (a resume must keep the config)
    # and runs without the variable.
    if len(completions) == 8:
        TRAIN_CALLS.append(1)
        if os.environ.get("RANK") == "1" and len(TRAIN_CALLS) == int(os.environ.get("DISTREWARD_FAIL_AT", "0")):
            raise RuntimeError("reward server unreachable")
    return hash_reward(completions)
"""

SPAWN_TIMEOUT_S = 240  # a hang (the failure this file guards against) must not stall the suite


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A dataset, a reward module on the import path, and the settings every run here shares."""
    rows = [{"prompt": f"{a}*{2 + a % 8}=", "answer": str(a * (2 + a % 8))} for a in range(10, 18)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "distreward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def settings(workdir: Path, reward: str = "hash_reward") -> dict:
    return {
        "model": "tiny",
        "task": "custom",
        "task_options": {"dataset": str(workdir / "data.jsonl"), "reward": f"distreward:{reward}", "test_size": 4},
        "algorithm": "t-spmo",
        "replay_prob": 0.5,
        "device": "cpu",
        "dtype": "float32",
        "sft_steps": 0,
        "steps": 2,
        "prompts_per_step": 4,
        "num_generations": 4,
        "max_new_tokens": 8,
        "eval_size": 4,
        "eval_batch_size": 4,
        "lr": 1e-2,
        "lora_dropout": 0.0,
        "sample_per_prompt": True,
        "num_threads": 1,
        "progress": False,
        "dist_timeout_s": 60,
        "seed": 3,
    }


def train_args(workdir: Path, out: Path, reward: str, extra: dict) -> list[str]:
    """`-m tokrl train --key value ...` for the shared settings, `output_dir` and `extra`."""
    args = ["-m", "tokrl", "train"]
    for key, value in (settings(workdir, reward) | {"output_dir": str(out)} | extra).items():
        args += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


def process_env(workdir: Path) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def torchrun(
    workdir: Path, out: Path, nproc: int = 2, reward: str = "hash_reward", **extra
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m tokrl train ...` as the user would type it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        command + train_args(workdir, out, reward, extra),
        env=process_env(workdir),
        capture_output=True,
        text=True,
        timeout=SPAWN_TIMEOUT_S,
    )


def each_rank(workdir: Path, out: Path, env: dict[str, str], nproc: int = 2, reward: str = "hash_reward", **extra):
    """`python -m tokrl train ...` once per rank with the variables torchrun sets, so every rank's exit status and
    last words are its own (torchrun stops the other ranks as soon as one exits)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    launch = {"WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = []
    for rank in range(nproc):
        rank_env = process_env(workdir) | launch | {"RANK": str(rank), "LOCAL_RANK": str(rank)} | env
        command = [sys.executable, *train_args(workdir, out, reward, extra)]
        procs.append(subprocess.Popen(command, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        return [(p.wait(timeout=SPAWN_TIMEOUT_S), p.stderr.read()) for p in procs]  # little output: no pipe fills
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.stdout.close()
            p.stderr.close()


def train_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_two_processes_match_one_and_resume(workdir):
    single = Trainer(load_config(**settings(workdir), output_dir=str(workdir / "one"))).run()

    done = torchrun(workdir, workdir / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    two = workdir / "two"
    one_adapter = load_file(str(single.checkpoint / "adapter_model.safetensors"))
    two_adapter = load_file(str(two / "checkpoint-2" / "adapter_model.safetensors"))
    assert one_adapter.keys() == two_adapter.keys()
    assert any(v.abs().max() > 0 for k, v in one_adapter.items() if "lora_B" in k), "the adapter trained"
    x = torch.cat([one_adapter[k].flatten() for k in one_adapter])  # [n] one process
    y = torch.cat([two_adapter[k].flatten() for k in one_adapter])  # [n] two processes
    # Adam divides by sqrt(v) + 1e-8: an element whose gradient is ~1e-8 turns fp32 rounding of the summed
    # gradient (1e-7 relative) into a visible update difference, bounded by the step size lr per step.
    # So: almost every element within fp32 tolerance, every element well inside one Adam step, and the
    # summed gradient itself (its norm, logged per step) equal to fp32 tolerance below.
    close = torch.isclose(y, x, rtol=1e-5, atol=1e-6)  # [n]
    assert close.float().mean() > 0.998, f"{int((~close).sum())} of {x.numel()} adapter values differ"
    torch.testing.assert_close(y, x, rtol=0, atol=0.2 * settings(workdir)["lr"])

    # Logged numbers are global: the same rewards and selections as one process, written once (rank 0).
    ones, twos = train_records(single.output_dir), train_records(two)
    assert [r["step"] for r in twos] == [1, 2]
    for a, b in zip(ones, twos, strict=True):
        for key in ("reward_mean", "reward_std", "frac_zero_std", "selected_tokens", "completion_len", "prefix_len"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), "the summed LoRA gradient"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    assert any(r["prefix_len"] > 0 for r in twos), "T-SPMO replay ran: every rank's replay buffer saw every group"
    results = json.loads((two / "results.json").read_text())
    assert results["eval_before"] == single.eval_before and results["eval_n"] == 4
    checkpoint = two / "checkpoint-2"
    assert (checkpoint / "rng_state_rank0.pt").is_file() and (checkpoint / "rng_state_rank1.pt").is_file()
    assert not list(two.glob(".checkpoint-*")), "no temporary checkpoint left behind"

    # SIGTERM on rank 1 alone: both ranks stop after step 1 and checkpoint; the resumed run ends bit for bit
    # where the uninterrupted two-process run ended.
    three = workdir / "three"
    stopped = torchrun(workdir, three, reward="rank1_interrupted")
    assert stopped.returncode != 0 and "interrupted at step 1" in stopped.stdout, stopped.stderr[-3000:]
    assert json.loads((three / "results.json").read_text())["interrupted"]
    assert (three / "checkpoint-1" / "rng_state_rank1.pt").is_file()
    resumed = torchrun(workdir, three, reward="rank1_interrupted", resume=True)  # the same config
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in train_records(three)] == [1, 2]
    again = load_file(str(three / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(torch.equal(again[k], two_adapter[k]) for k in two_adapter)
    assert [r["loss"] for r in train_records(three)] == [r["loss"] for r in twos]


def test_a_reward_error_on_one_rank_saves_the_last_good_step_on_every_rank(workdir):
    # Rank 1's reward raises at step 2: every rank stops there with the error, rank 0 having saved step 1 with
    # every rank's RNG state (a collective save, as one process saves), and nothing of step 2 applied.
    out = workdir / "failed"
    failed = each_rank(workdir, out, {"DISTREWARD_FAIL_AT": "2"}, reward="rank1_fails_at")
    checkpoint = out / "checkpoint-1"
    for rank, (code, stderr) in enumerate(failed):
        errors = [line for line in stderr.splitlines() if line.startswith("tokrl train: error:")]
        assert code == 1 and len(errors) == 1, f"rank {rank}: exit {code}\n{stderr[-3000:]}"
        assert "reward server unreachable at step 2" in errors[0], errors[0]
        assert f"the last good step is saved in {checkpoint}" in errors[0], errors[0]
        assert f"--output-dir {out} --resume" in errors[0]
    assert "rank 1 of 2 failed: reward function 'rank1_fails_at' raised" in failed[0][1]  # rank 0 names rank 1
    assert "rank 1 of 2 failed during training (step 2)" in failed[1][1]  # rank 1 logs its own rank
    assert "rank 0 of 2 stops during training (step 2): rank 1 of 2 failed" in failed[0][1]  # rank 0 did not fail
    assert "rank 0 of 2 failed" not in failed[0][1]
    assert missing_files(checkpoint) == []
    assert (checkpoint / "rng_state_rank0.pt").is_file() and (checkpoint / "rng_state_rank1.pt").is_file()
    assert [p.name for p in out.glob("*checkpoint-*")] == ["checkpoint-1"]
    assert [r["step"] for r in train_records(out)] == [1]

    # With the reward working again the resumed run ends bit for bit where an uninterrupted run ends.
    resumed = torchrun(workdir, out, reward="rank1_fails_at", resume=True)  # the same config
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = workdir / "full"
    done = torchrun(workdir, full, reward="rank1_fails_at")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in train_records(out)] == [1, 2]
    assert [r["loss"] for r in train_records(out)] == [r["loss"] for r in train_records(full)]
    want = load_file(str(full / "checkpoint-2" / "adapter_model.safetensors"))
    got = load_file(str(out / "checkpoint-2" / "adapter_model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert (
        json.loads((out / "results.json").read_text())["eval_after"]
        == json.loads((full / "results.json").read_text())["eval_after"]
    )


def _fail_together_rank(rank: int, world: int, store: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        with fail_together(ValueError):
            pass  # nobody fails: nothing is raised
        outcome = "passed"
        try:
            with fail_together(ValueError):
                if rank in (1, 2):
                    raise ValueError(f"bad reward {rank}")
        except ValueError as err:
            outcome = (str(err), getattr(err, "failed_ranks", None))
        results[rank] = outcome
    finally:
        dist.destroy_process_group()


def test_fail_together_raises_on_every_rank_naming_the_failing_ones(tmp_path):
    with pytest.raises(KeyError):  # one process: the block's own errors, untouched, and no collective
        with fail_together(KeyError):
            raise KeyError("x")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_fail_together_rank, args=(3, str(tmp_path / "store"), results), nprocs=3)
        assert dict(results) == {
            0: ("ranks 1, 2 of 3 failed; rank 1: bad reward 1", [1, 2]),
            1: ("bad reward 1", None),  # a failing rank re-raises its own error
            2: ("bad reward 2", None),
        }


def test_a_failing_rank_stops_the_run(workdir):
    done = torchrun(workdir, workdir / "fail", reward="rank1_fails", steps=1)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "reward server unreachable" in done.stderr


def test_world_size_arithmetic_fails_before_weights_load(workdir, monkeypatch):
    with pytest.raises(ValueError, match=r"prompts_per_step: 6 prompts .* 4 processes .* multiple of 4, e\.g\. 4 or 8"):
        check_world_size(6, 4)
    check_world_size(8, 4)
    check_world_size(3, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    config = load_config(**settings(workdir), output_dir=str(workdir / "bad"))
    with pytest.raises(ValueError, match=r"prompts_per_step: 4 .* 3 processes"):
        Trainer(config)
    assert not (workdir / "bad").exists()


def test_launch_env_reads_torchrun_and_accelerate_variables():
    assert launch_env({}) == launch_env({"WORLD_SIZE": "1", "RANK": "0"})
    env = launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="RANK=4 is outside WORLD_SIZE=4"):
        launch_env({"WORLD_SIZE": "4", "RANK": "4"})


def test_two_processes_share_rank0s_warm_start_also_when_overwrite_rebuilds_it(workdir):
    # Rank 0 alone writes the warm start (and holds the output dir's lock); the other ranks load the folder it
    # names, which under --overwrite is a pending one beside the earlier run's until the run has started.
    out = workdir / "warm"
    first = torchrun(workdir, out, sft_steps=2, sft_batch_size=4)
    assert first.returncode == 0, first.stderr[-3000:]
    again = torchrun(workdir, out, sft_steps=3, sft_batch_size=4, overwrite="true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "sft" / "sft_config.json").read_text())["settings"]["sft_steps"] == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no lock, nothing pending or stale
