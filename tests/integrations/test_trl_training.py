"""Three GRPO steps through TokrlGRPOTrainer log what plain TRL logs (full fine-tuning: the LM head trains too)."""

from __future__ import annotations

import warnings

import pytest
from datasets import Dataset
from trl import GRPOTrainer

from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tokrl.integrations.trl import TokrlGRPOTrainer

LOGGED = ("loss", "grad_norm", "reward", "entropy", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
          "clip_ratio/region_mean")  # fmt: skip


def _train(cls, tiny_path, tmp_path, **kwargs):
    overrides = kwargs.pop("overrides")
    trainer = cls(model=tiny_path, reward_funcs=digit_reward, args=grpo_args(tmp_path, **overrides),
                  train_dataset=Dataset.from_dict({"prompt": PROMPTS}), **kwargs)  # fmt: skip
    trainer.train()
    return trainer, [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "overrides"),
    [
        # off-policy (two updates per generation) with a KL to a reference model: the reference is patched too
        pytest.param("logprob", {"loss_type": "dapo", "beta": 0.04, "num_iterations": 2}, id="logprob-dapo-kl"),
        # the ratio-weighted KL on-policy, computed by linear_pg_loss
        pytest.param("pg_loss", {"loss_type": "grpo", "beta": 0.04}, id="pg_loss-grpo-kl"),
        # off-policy with a tight clip range, computed by linear_pg_loss
        pytest.param("pg_loss", {"loss_type": "bnpo", "num_iterations": 2, "epsilon": 0.02}, id="pg_loss-bnpo-clip"),
    ],
)
def test_three_steps_log_the_same_as_trl(tiny_path, tmp_path, mode, overrides):
    _, reference = _train(GRPOTrainer, tiny_path, tmp_path / "trl", overrides=overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*use_tokrl_kernels.*")  # no silent fallback to TRL's loss
        ours, logged = _train(TokrlGRPOTrainer, tiny_path, tmp_path / "tokrl", overrides=overrides,
                              tokrl_mode=mode, tokrl_impl="torch")  # fmt: skip
    assert ours.tokrl_kernels_path["models"] == ("policy + reference" if "beta" in overrides else "policy")
    assert len(logged) == len(reference) == 3
    assert any(entry["loss"] != 0 for entry in reference) and all(entry["grad_norm"] > 0 for entry in reference[1:])
    for step, (got, want) in enumerate(zip(logged, reference, strict=True), start=1):
        for key in LOGGED:
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), f"step {step}: {key}"
