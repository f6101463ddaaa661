"""Three GRPO steps through TokrlGRPOTrainer log what plain TRL logs (full fine-tuning: the LM head trains too)."""

from __future__ import annotations

import warnings

import pytest
from datasets import Dataset
from trl import GRPOTrainer

from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tokrl.integrations.trl import TokrlGRPOTrainer

LOGGED = (
    "loss",
    "grad_norm",
    "reward",
    "entropy",
    "kl",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
)


def _train(cls, tiny_path, tmp_path, **kwargs):
    overrides = kwargs.pop("overrides")
    trainer = cls(
        model=tiny_path,
        reward_funcs=digit_reward,
        args=grpo_args(tmp_path, **overrides),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        **kwargs,
    )
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
        # TRL's default bias-corrected KL with reused generations (the 0 kernel calls / 4 fallbacks case)
        pytest.param("pg_loss", {"loss_type": "grpo", "beta": 0.04, "num_iterations": 2}, id="pg_loss-grpo-kl-reused"),
        pytest.param(
            "pg_loss",
            {"loss_type": "dapo", "beta": 0.04, "steps_per_generation": 2},
            id="pg_loss-dapo-kl-steps-per-generation",
        ),
    ],
)
def test_three_steps_log_the_same_as_trl(tiny_path, tmp_path, mode, overrides):
    _, reference = _train(GRPOTrainer, tiny_path, tmp_path / "trl", overrides=overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*use_tokrl_kernels.*")  # no silent fallback to TRL's loss
        ours, logged = _train(
            TokrlGRPOTrainer, tiny_path, tmp_path / "tokrl", overrides=overrides, tokrl_mode=mode, tokrl_impl="torch"
        )
    assert ours.tokrl_kernels_path["models"] == ("policy + reference" if "beta" in overrides else "policy")
    assert len(logged) == len(reference) == 3
    assert any(entry["loss"] != 0 for entry in reference) and all(entry["grad_norm"] > 0 for entry in reference[1:])
    for step, (got, want) in enumerate(zip(logged, reference, strict=True), start=1):
        for key in LOGGED:
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), f"step {step}: {key}"
    if mode == "pg_loss":  # every loss call was a kernel call, counted per step in the path report and the logs
        per_step = ours.tokrl_kernels_path["loss_calls_per_step"]
        assert sorted(per_step) == [1, 2, 3] and all(c == {"kernel": 1, "fallback": 0} for c in per_step.values())
        assert [(e["tokrl/loss_kernel_calls"], e["tokrl/loss_fallbacks"]) for e in logged] == [(1.0, 0.0)] * 3


@pytest.mark.slow
def test_fallbacks_are_counted_per_step_and_logged(tiny_path, tmp_path):
    """A configuration linear_pg_loss cannot express (cispo), with 2 gradient-accumulation steps: TRL's loss runs,
    the report says so with its counts, and TRL's logs carry tokrl/loss_fallbacks per optimizer step."""
    overrides = {"loss_type": "cispo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    with pytest.warns(UserWarning, match="loss_type='cispo'"):
        ours, logged = _train(
            TokrlGRPOTrainer, tiny_path, tmp_path, overrides=overrides, tokrl_mode="pg_loss", tokrl_impl="torch"
        )
    path = ours.tokrl_kernels_path
    assert (path["loss_kernel_calls"], path["loss_fallbacks"]) == (0, 6)
    supported = "['bnpo', 'dapo', 'dr_grpo', 'grpo']"
    assert path["loss"] == f"TRL's _compute_loss (fallback: loss_type='cispo' (supported: {supported}))"
    assert path["loss_calls_per_step"] == {step: {"kernel": 0, "fallback": 2} for step in (1, 2, 3)}
    assert [(e["tokrl/loss_kernel_calls"], e["tokrl/loss_fallbacks"]) for e in logged] == [(0.0, 2.0)] * 3
