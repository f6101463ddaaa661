"""TokrlGRPOTrainer computes what TRL's GRPOTrainer computes on every family, MoE and a trained head copy (fp32).

- Every family of tests/model_families.py (tied and untied heads, logit scale, soft-cap, MoE, GPT-2), saved and
  loaded by path: one batch through TRL's loss and through tokrl's (pg_loss mode: one linear_pg_loss call, TRL's
  default bias-corrected KL with off-policy old log-probs), the same loss, LoRA gradients and metrics. MoE models
  keep their default config (output_router_logits false, router_aux_loss_coef 0.001): TRL adds the router
  load-balancing loss, and so does tokrl.
- The MoE default config trains 3 steps with tokrl exactly as without.
- `modules_to_save=["lm_head"]` (untied, and tied: the copy replaces the head side only, as in the model's own
  forward): the copy trains through the kernels' dW, also over 3 steps (untied) with a reference model pass
  (beta > 0: TRL disables the adapter, so the original head scores the reference) and reused generations.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOTrainer

from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tests.integrations.test_trl_equivalence import METRICS, TOL, _batch, _loss_grads_metrics
from tests.model_families import FAMILIES, build_family_model, save_family_model
from tokrl.integrations.trl import TokrlGRPOTrainer
from tokrl.models.lora_targets import linear_layer_names

# TRL's default use_bias_correction_kl=True. disable_dropout: GPT-2's own dropout (0.1) would draw different masks
# in the two trainers' train-mode forwards.
KL_OFF_POLICY = {"loss_type": "grpo", "beta": 0.04, "disable_dropout": True}
TRAINED = ("loss", "grad_norm", "reward", "entropy", "kl", "aux_loss", "clip_ratio/region_mean")


@pytest.fixture(scope="module")
def family_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: str(save_family_model(name, root / name)) for name in FAMILIES}


def _lora(family, **extra):
    targets = linear_layer_names(build_family_model(family)[0])  # every linear layer: all-linear, by name
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **extra)


def _pair(path, tmp_path, mode, lora, **overrides):
    common = {
        "model": path,
        "reward_funcs": digit_reward,
        "args": grpo_args(tmp_path, **overrides),
        "peft_config": lora,
        "train_dataset": Dataset.from_dict({"prompt": PROMPTS}),
    }
    plain = GRPOTrainer(**common)
    ours = TokrlGRPOTrainer(**common, tokrl_mode=mode, tokrl_impl="torch")
    with torch.no_grad():
        pairs = zip(plain.model.named_parameters(), ours.model.named_parameters(), strict=True)
        for (name, p), (name_ours, q) in pairs:
            assert name == name_ours
            q.copy_(p)
    for trainer in (plain, ours):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2
    return plain, ours


def _assert_same(plain, ours, inputs, trainable=("lora_",)):
    loss_ref, grads_ref, metrics_ref = _loss_grads_metrics(plain, inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*use_tokrl_kernels.*")  # a fallback would fail the case
        loss, grads, metrics = _loss_grads_metrics(ours, inputs)
    assert torch.isfinite(loss_ref) and loss_ref != 0
    assert abs(loss.item() - loss_ref.item()) <= TOL * max(1.0, abs(loss_ref.item())), (loss.item(), loss_ref.item())
    assert grads.keys() == grads_ref.keys() and grads
    assert all(any(t in name for t in trainable) for name in grads), sorted(grads)
    for name, g_ref in grads_ref.items():
        scale = g_ref.abs().max()
        assert scale > 0, f"{name}: zero reference gradient, the comparison would prove nothing"
        diff = (grads[name] - g_ref).abs().max()
        assert diff <= TOL and diff <= 1e-5 * scale, f"{name}: {diff:.3g} vs |g| {scale:.3g}"
    for key in (*METRICS, "aux_loss"):
        assert (key in metrics) == (key in metrics_ref), key
        if key in metrics_ref:
            assert metrics[key] == pytest.approx(metrics_ref[key], abs=1e-5), key
    return grads, metrics


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pg_loss_mode_matches_trl_on_every_family(family, family_paths, tmp_path):
    plain, ours = _pair(family_paths[family], tmp_path, "pg_loss", _lora(family), **KL_OFF_POLICY)
    _, metrics = _assert_same(plain, ours, _batch(plain, off_policy=True))
    assert ("aux_loss" in metrics) == FAMILIES[family].moe  # TRL adds the router loss of the default MoE config
    assert (ours.tokrl_kernels_path["loss_kernel_calls"], ours.tokrl_kernels_path["loss_fallbacks"]) == (1, 0)


@pytest.mark.parametrize("family", [name for name, f in FAMILIES.items() if f.moe or f.softcap or f.logit_scale != 1])
def test_logprob_mode_matches_trl_on_transformed_heads_and_moe(family, family_paths, tmp_path):
    plain, ours = _pair(family_paths[family], tmp_path, "logprob", _lora(family), **KL_OFF_POLICY)
    _assert_same(plain, ours, _batch(plain, off_policy=True))


def _train(cls, path, tmp_path, **kwargs):
    trainer = cls(
        model=path,
        reward_funcs=digit_reward,
        args=grpo_args(tmp_path, **kwargs.pop("overrides")),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*use_tokrl_kernels.*")  # no silent fallback to TRL's loss
        trainer.train()
    return trainer, [entry for entry in trainer.state.log_history if "loss" in entry]


def _assert_same_logs(got, want):
    assert len(got) == len(want) == 3
    assert all(entry["grad_norm"] > 0 for entry in want[1:])
    for step, (ours, theirs) in enumerate(zip(got, want, strict=True), start=1):
        for key in TRAINED:
            assert (key in ours) == (key in theirs), f"step {step}: {key}"
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), f"step {step}: {key}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "mode"), [("qwen2-moe", "pg_loss"), ("mixtral", "logprob")], ids=["qwen2-moe-pg_loss", "mixtral-logprob"]
)
def test_moe_default_config_trains_as_trl(family, mode, family_paths, tmp_path):
    """Full fine-tuning, the routers included: the load-balancing loss reaches them as in TRL."""
    overrides = {"loss_type": "dapo", "beta": 0.04, "num_iterations": 2}
    _, reference = _train(GRPOTrainer, family_paths[family], tmp_path / "trl", overrides=overrides)
    ours, logged = _train(
        TokrlGRPOTrainer,
        family_paths[family],
        tmp_path / "tokrl",
        overrides=overrides,
        tokrl_mode=mode,
        tokrl_impl="torch",
    )
    assert all(entry["aux_loss"] > 0 for entry in reference)
    _assert_same_logs(logged, reference)
    if mode == "pg_loss":
        assert all(entry["tokrl/loss_fallbacks"] == 0 and entry["tokrl/loss_kernel_calls"] > 0 for entry in logged)


@pytest.mark.parametrize("family", ["llama", "llama-tied"])  # tied too: the copy replaces the head side only
def test_a_copy_of_the_head_trains_through_the_kernels(family, family_paths, tmp_path):
    lora = _lora(family, modules_to_save=["lm_head"])
    plain, ours = _pair(family_paths[family], tmp_path, "pg_loss", lora, **KL_OFF_POLICY)
    grads, _ = _assert_same(plain, ours, _batch(plain, off_policy=True), trainable=("lora_", "modules_to_save"))
    copy = [name for name in grads if "lm_head.modules_to_save" in name]
    assert copy and all(grads[name].abs().max() > 0 for name in copy)  # the kernels' dW reached the copy
    assert all(p.grad is None for name, p in ours.model.named_parameters() if "lm_head.original_module" in name)


@pytest.mark.slow
def test_a_copy_of_the_untied_head_trains_as_trl(family_paths, tmp_path):
    """3 steps, a reference pass (adapter disabled: the original head) and reused generations, as plain TRL."""
    overrides = {"loss_type": "bnpo", "beta": 0.04, "num_iterations": 2}
    lora = _lora("llama", modules_to_save=["lm_head"])
    plain, reference = _train(
        GRPOTrainer, family_paths["llama"], tmp_path / "trl", overrides=overrides, peft_config=lora
    )
    ours, logged = _train(
        TokrlGRPOTrainer,
        family_paths["llama"],
        tmp_path / "tokrl",
        overrides=overrides,
        peft_config=lora,
        tokrl_mode="pg_loss",
        tokrl_impl="torch",
    )
    _assert_same_logs(logged, reference)
    heads = [dict(t.model.named_parameters()) for t in (plain, ours)]
    name = next(n for n in heads[0] if "lm_head.modules_to_save" in n)
    torch.testing.assert_close(heads[1][name], heads[0][name], rtol=1e-5, atol=1e-6)
    assert ours.tokrl_kernels_path["loss_fallbacks"] == 0 and ours.tokrl_kernels_path["loss_kernel_calls"] > 0
