"""Models and settings tokrl cannot serve exactly are refused with the reason; bad arguments name themselves."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOTrainer

import tokrl.integrations.trl as trl_integration
from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tokrl.integrations.entropy import KERNEL_HAS_ENTROPY
from tokrl.integrations.trl import TokrlGRPOTrainer, UnsupportedByTokrl, use_tokrl_kernels
from tokrl.integrations.trl_head import check_head_servable
from tokrl.models import build_tiny_model
from tokrl.tokenizer import build_char_tokenizer


def _trainer(tmp_path, model, cls=GRPOTrainer, **kwargs):
    overrides = kwargs.pop("overrides", {})
    return cls(model=model, reward_funcs=digit_reward, args=grpo_args(tmp_path, **overrides),
               train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=build_char_tokenizer(),
               **kwargs)  # fmt: skip


def _tiny(**config):
    model, _ = build_tiny_model(seed=0)
    for key, value in config.items():
        setattr(model.config, key, value)
    return model


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        pytest.param({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0", id="softcap"),
        pytest.param({"logit_scale": 0.5}, "logit_scale=0.5", id="logit-scale"),
        pytest.param({"lm_head_multiplier": 2.0}, "lm_head_multiplier=2.0", id="lm-head-multiplier"),
        pytest.param({"logits_scaling": 4.0}, "logits_scaling=4.0", id="logits-scaling"),
    ],
)
def test_logit_transforms_are_refused(tmp_path, config, reason):
    trainer = _trainer(tmp_path, _tiny(**config))  # TRL itself serves these models
    with pytest.raises(UnsupportedByTokrl, match=reason):
        use_tokrl_kernels(trainer)


def test_neutral_logit_scale_is_served(tmp_path):
    trainer = use_tokrl_kernels(_trainer(tmp_path, _tiny(logit_scale=1.0)), impl="torch")
    assert trainer.tokrl_kernels_path["log_probs"] == "tokrl_kernels.linear_logprob (impl=torch)"


def test_head_bias_is_refused(tmp_path):
    model = _tiny(tie_word_embeddings=False)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with pytest.raises(UnsupportedByTokrl, match="LM head has a bias"):
        _trainer(tmp_path, model, cls=TokrlGRPOTrainer)


def test_adapted_head_is_refused(tmp_path):
    # TRL refuses LoRA on lm_head itself, but not a trainable copy of it (modules_to_save): tokrl does.
    lora = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(UnsupportedByTokrl, match="adapted LM head.*ModulesToSaveWrapper"):
        _trainer(tmp_path, _tiny(), cls=TokrlGRPOTrainer, peft_config=lora)


def test_router_logits_model_is_refused():
    with pytest.raises(UnsupportedByTokrl, match="Mixture-of-Experts"):
        check_head_servable(_tiny(output_router_logits=True))


def test_entropy_bonus_needs_kernel_entropy(tmp_path, monkeypatch):
    monkeypatch.setattr(trl_integration, "KERNEL_HAS_ENTROPY", False)
    trainer = _trainer(tmp_path, _tiny(), overrides={"entropy_coef": 0.01})
    with pytest.raises(UnsupportedByTokrl, match="entropy bonus.*return_entropy"):
        use_tokrl_kernels(trainer)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="tokrl_mode must be one of"):
        _trainer(tmp_path, _tiny(), cls=TokrlGRPOTrainer, tokrl_mode="loss")
    trainer = _trainer(tmp_path, _tiny())
    with pytest.raises(ValueError, match="mode must be one of"):
        use_tokrl_kernels(trainer, mode="fast")
    with pytest.raises(ValueError, match="impl: expected one of"):
        use_tokrl_kernels(trainer, impl="cuda")
    with pytest.raises(TypeError, match="must be a trl.GRPOTrainer"):
        use_tokrl_kernels(object())
    use_tokrl_kernels(trainer, impl="torch")
    with pytest.raises(RuntimeError, match="already uses tokrl"):
        use_tokrl_kernels(trainer)


def test_the_path_taken_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tokrl.integrations.trl"):
        _trainer(tmp_path, _tiny(), cls=TokrlGRPOTrainer, tokrl_mode="pg_loss", tokrl_impl="torch",
                 overrides={"loss_type": "cispo"})  # fmt: skip
    line = caplog.records[-1].getMessage()
    assert "tokrl_kernels.linear_logprob (impl=torch)" in line
    assert "fallback: loss_type='cispo'" in line
    entropy = "in-kernel" if KERNEL_HAS_ENTROPY else "no-gradient chunked pass"
    assert f"entropy: {entropy}" in line
