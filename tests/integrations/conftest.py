"""Shared setup for the TRL integration tests: the tiny model saved where TRL can load it, small GRPO configs."""

from __future__ import annotations

import zlib

import pytest

trl = pytest.importorskip("trl", reason="TRL is an optional extra: pip install tokrl[trl]")

from tokrl.models.tiny import build_tiny_model  # noqa: E402

PROMPTS = ["12+3=", "7*8=", "9-4=", "1+1=", "40/5=", "3*3=", "8+0=", "6-6="]


def digit_reward(completions, **kwargs):
    """A reward that varies between completions of a random model: the share of digits in the text, its length,
    and a stable hash of it (with the byte-fallback vocabulary a random model rarely writes digits, and groups of
    equal-length digit-free completions would otherwise all score the same)."""
    return [
        sum(ch.isdigit() for ch in c) / max(len(c), 1) + 0.1 * len(c) + (zlib.crc32(c.encode()) % 5) / 10
        for c in completions
    ]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """The tiny Qwen2 model and its character tokenizer, saved for TRL's `model=<path>`."""
    path = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = build_tiny_model(seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def grpo_args(tmp_path, **overrides):
    """A tiny fp32 CPU GRPOConfig: 4 completions per step, 8 new tokens at most."""
    settings = {
        "output_dir": str(tmp_path / "trl-out"),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,  # TRL's default autocasts to bf16 on CPU too; equality is checked in fp32
        "seed": 0,
        "disable_tqdm": True,
        "gradient_checkpointing": False,  # TRL turns it on by default; it only costs time on the tiny model
    }
    return trl.GRPOConfig(**(settings | overrides))
