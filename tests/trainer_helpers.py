"""Shared helpers of the trainer tests: a small config of the tiny model, Trainers with deterministic rewards,
and snapshots of run folders (a helpers module: test modules import it, never each other).

The tiny model starts from random weights (sft_steps=0, so no warm start), and its completions would all score 0
on multiplication. `HashRewardTrainer` swaps the task reward for a deterministic hash of the text, so groups have
mixed rewards and every algorithm has something to learn from.
"""

from __future__ import annotations

import signal
import zlib
from pathlib import Path

import torch

from tokrl.config import load_config
from tokrl.trainer import Trainer


def hash_reward(completions, **columns):
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]


def small_config(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path / "run"),
        "sft_steps": 0,
        "steps": 2,
        "prompts_per_step": 2,
        "num_generations": 4,
        "max_new_tokens": 6,
        "eval_size": 4,
        "eval_batch_size": 4,
        "lr": 1e-2,
        "progress": False,
        "num_threads": 1,
        "task_options": {"digits_a": 2, "digits_b": 1, "train_size": 8, "test_size": 4},
    }
    return load_config(**(settings | overrides))


class HashRewardTrainer(Trainer):
    """A Trainer whose task reward is `hash_reward`; optionally raises SIGINT after step `interrupt_at`."""

    interrupt_at: int | None = None

    def __init__(self, config):
        super().__init__(config)
        self.task.reward = hash_reward

    def train_step(self, step):
        record = super().train_step(step)
        if step + 1 == self.interrupt_at:  # the run stops after this step, as after a real Ctrl-C
            signal.raise_signal(signal.SIGINT)
        return record


class ConstantRewardTrainer(HashRewardTrainer):
    """Every completion gets the same reward (`value`): no group has a learning signal."""

    value: float | None = 0.0

    def __init__(self, config):
        super().__init__(config)
        self.task.reward = lambda completions, **columns: [self.value] * len(completions)


def base_and_lora(model):
    """(base weights, LoRA weights) of `model`, cloned: name -> tensor."""
    base = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    return base, lora


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ between two snapshots of the same weights."""
    return [k for k in before if not torch.equal(before[k], after[k])]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
