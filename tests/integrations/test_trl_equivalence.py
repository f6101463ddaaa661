"""TokrlGRPOTrainer computes what TRL's GRPOTrainer computes: loss, LoRA gradients and logged metrics (fp32).

Each case builds a plain GRPOTrainer and a TokrlGRPOTrainer on the same tiny model with the same LoRA
weights (random A and B, so every LoRA gradient is non-zero), feeds both the same hand-made batch (left-padded
prompts, completions of different lengths, advantages of both signs; off-policy cases get old log-probs
0.4-nats away from the current ones, so clipping is active on both sides) and compares.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOTrainer

from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tokrl.integrations.trl import TokrlGRPOTrainer

TOL = 1e-6
METRICS = (
    "entropy",
    "kl",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
)


def _trainers(tiny_path, tmp_path, mode, **overrides):
    args = grpo_args(tmp_path, **overrides)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    common = {
        "model": tiny_path,
        "reward_funcs": digit_reward,
        "args": args,
        "peft_config": lora,
        "train_dataset": Dataset.from_dict({"prompt": PROMPTS}),
    }
    plain = GRPOTrainer(**common)
    ours = TokrlGRPOTrainer(**common, tokrl_mode=mode, tokrl_impl="torch")
    with torch.no_grad():
        for (name, p), (name_ours, q) in zip(
            plain.model.named_parameters(), ours.model.named_parameters(), strict=True
        ):
            assert name == name_ours
            q.copy_(p)
    for trainer in (plain, ours):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2  # the loss normalisers divide by it
    return plain, ours


def _batch(trainer, *, off_policy: bool) -> dict:
    b, p, t = 4, 5, 6
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[1, :2] = 0  # left padding
    completion_mask = torch.ones(b, t, dtype=torch.long)
    completion_mask[0, 4:] = 0  # an early EOS
    completion_mask[2, 1:] = 0  # a one-token completion
    prompt_ids = torch.randint(3, 99, (b, p)).masked_fill(prompt_mask == 0, 0)
    completion_ids = torch.randint(3, 99, (b, t)).masked_fill(completion_mask == 0, 0)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([0.9, -1.1, 0.4, -0.3]) * (1 + torch.rand(4)),  # both signs
        "num_items_in_batch": completion_mask.sum().float(),
    }
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), t
        )  # [B, T]
    if off_policy:
        inputs["old_per_token_logps"] = logps + 0.4 * torch.randn_like(logps)
    if trainer.beta != 0.0:
        inputs["ref_per_token_logps"] = logps + 0.3 * torch.randn_like(logps)
    return inputs


def _loss_grads_metrics(trainer, inputs):
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _assert_same(plain, ours, inputs):
    loss_ref, grads_ref, metrics_ref = _loss_grads_metrics(plain, inputs)
    loss, grads, metrics = _loss_grads_metrics(ours, inputs)
    assert torch.isfinite(loss_ref) and loss_ref != 0
    assert abs(loss.item() - loss_ref.item()) <= TOL, (loss.item(), loss_ref.item())
    assert grads.keys() == grads_ref.keys() and len(grads) > 0
    assert all("lora_" in name for name in grads), "only LoRA weights train"
    for name, g_ref in grads_ref.items():
        assert g_ref.abs().max() > 0, f"{name}: zero reference gradient, the comparison would prove nothing"
        diff = (grads[name] - g_ref).abs().max()
        # Gradients here are 1e-4..1e-1: besides the absolute 1e-6, hold each tensor to 1e-5 of its own scale.
        assert diff <= TOL and diff <= 1e-5 * g_ref.abs().max(), f"{name}: {diff:.3g} vs |g| {g_ref.abs().max():.3g}"
    for key in METRICS:
        if key in metrics_ref:
            assert metrics[key] == pytest.approx(metrics_ref[key], abs=1e-5), key
    return metrics_ref


ENTROPY_BONUS = pytest.param({"entropy_coef": 0.01, "loss_type": "grpo"}, True, id="entropy-bonus")

# mode="logprob": TRL's own loss on tokrl's log-probs, so every TRL loss configuration is served.
LOGPROB_CASES = [
    pytest.param({}, False, id="dapo-default"),  # TRL's defaults: dapo, beta 0
    pytest.param({"loss_type": "grpo"}, True, id="grpo-clipped"),
    pytest.param({"loss_type": "bnpo", "beta": 0.04}, True, id="bnpo-kl-ratio-weighted"),
    pytest.param({"loss_type": "dr_grpo", "beta": 0.04, "use_bias_correction_kl": False}, True, id="dr_grpo-kl"),
    pytest.param({"loss_type": "cispo"}, True, id="cispo"),
    pytest.param({"loss_type": "sapo"}, True, id="sapo"),
    pytest.param({"loss_type": "grpo", "importance_sampling_level": "sequence"}, True, id="sequence-is"),
    pytest.param({"top_entropy_quantile": 0.5}, True, id="top-entropy-mask"),
    pytest.param({"loss_type": "grpo", "temperature": 0.7}, True, id="temperature"),
    ENTROPY_BONUS,
]

# mode="pg_loss": the loss is one linear_pg_loss call; these must not fall back.
PG_LOSS_CASES = [
    pytest.param({"loss_type": "grpo"}, True, id="grpo-clipped"),
    pytest.param({"loss_type": "bnpo"}, True, id="bnpo-clipped"),
    pytest.param({"loss_type": "dr_grpo"}, True, id="dr_grpo-clipped"),
    pytest.param({"loss_type": "dapo"}, True, id="dapo-clipped"),
    pytest.param({"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": False}, True, id="grpo-kl"),
    pytest.param({"loss_type": "dapo", "beta": 0.04}, False, id="dapo-kl-ratio-weighted-on-policy"),
    pytest.param({"loss_type": "bnpo", "beta": 0.04}, False, id="bnpo-kl-ratio-weighted-on-policy"),
    # TRL's default KL (use_bias_correction_kl=True) with reused generations: old log-probs, clipping both sides
    pytest.param({"loss_type": "grpo", "beta": 0.04}, True, id="grpo-kl-ratio-weighted-off-policy"),
    pytest.param({"loss_type": "dapo", "beta": 0.1, "temperature": 0.7}, True, id="dapo-kl-ratio-weighted-off-policy"),
    pytest.param(
        {"loss_type": "dr_grpo", "beta": 0.04, "use_bias_correction_kl": False, "temperature": 0.7},
        True,
        id="dr_grpo-kl-temperature",
    ),
]


@pytest.mark.parametrize(("overrides", "off_policy"), LOGPROB_CASES)
def test_logprob_mode_matches_trl(tiny_path, tmp_path, overrides, off_policy):
    plain, ours = _trainers(tiny_path, tmp_path, "logprob", **overrides)
    _assert_same(plain, ours, _batch(plain, off_policy=off_policy))


@pytest.mark.parametrize(("overrides", "off_policy"), PG_LOSS_CASES)
def test_pg_loss_mode_matches_trl(tiny_path, tmp_path, overrides, off_policy):
    plain, ours = _trainers(tiny_path, tmp_path, "pg_loss", **overrides)
    assert ours.tokrl_kernels_path["loss"] == "tokrl_kernels.linear_pg_loss"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*use_tokrl_kernels.*")  # a fallback would fail the case
        metrics = _assert_same(plain, ours, _batch(plain, off_policy=off_policy))
    if off_policy:  # the case exists to exercise clipping: it must actually clip, on both sides
        assert metrics["clip_ratio/low_mean"] > 0 and metrics["clip_ratio/high_mean"] > 0
    path = ours.tokrl_kernels_path
    assert (path["loss_kernel_calls"], path["loss_fallbacks"]) == (1, 0)  # the kernel computed it
    assert path["loss"] == "tokrl_kernels.linear_pg_loss"
    # per optimizer step in TRL's log: the call's indicator x the 2 accumulation steps set by _trainers
    assert (ours._metrics["train"]["tokrl/loss_kernel_calls"], ours._metrics["train"]["tokrl/loss_fallbacks"]) == (
        [2.0],
        [0.0],
    )


@pytest.mark.parametrize(
    ("overrides", "off_policy", "reason"),
    [
        pytest.param({"loss_type": "cispo"}, True, "loss_type='cispo'", id="cispo"),
        pytest.param({"loss_type": "grpo", "delta": 1.5}, True, "delta", id="two-sided-clipping"),
    ],
)
def test_pg_loss_mode_falls_back_with_one_warning(tiny_path, tmp_path, overrides, off_policy, reason):
    plain, ours = _trainers(tiny_path, tmp_path, "pg_loss", **overrides)
    inputs = _batch(plain, off_policy=off_policy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_same(plain, ours, inputs)
        _assert_same(plain, ours, inputs)
    fallbacks = [w for w in caught if "use_tokrl_kernels" in str(w.message)]
    assert len(fallbacks) == 1 and reason in str(fallbacks[0].message)
    path = ours.tokrl_kernels_path
    assert (path["loss_kernel_calls"], path["loss_fallbacks"]) == (0, 2)
    assert path["loss"].startswith("TRL's _compute_loss (fallback: ") and reason in path["loss"]
    assert ours._metrics["train"]["tokrl/loss_fallbacks"] == [2.0]  # the last call, x 2 accumulation steps


@pytest.mark.parametrize("mode", ["logprob", "pg_loss"])
def test_a_batch_without_loss_tokens_gives_a_zero_loss_that_backpropagates(tiny_path, tmp_path, mode):
    plain, ours = _trainers(tiny_path, tmp_path, mode, loss_type="grpo")
    inputs = _batch(plain, off_policy=False)
    inputs["completion_mask"] = torch.zeros_like(inputs["completion_mask"])
    for trainer in (plain, ours):
        loss = trainer.compute_loss(trainer.model, inputs)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()  # a differentiable zero, as TRL's masked_scatter makes it
