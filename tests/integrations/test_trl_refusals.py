"""Models and settings tokrl cannot serve exactly are refused with the reason, the rest served; bad arguments name
themselves."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from trl import GRPOTrainer

from tests.integrations.conftest import PROMPTS, digit_reward, grpo_args
from tokrl.integrations.trl import TokrlGRPOTrainer, UnsupportedByTokrl, use_tokrl_kernels
from tokrl.integrations.trl_head import check_head_servable
from tokrl.models.tiny import build_tiny_model
from tokrl.models.tokenizer import build_char_tokenizer


def _trainer(tmp_path, model, cls=GRPOTrainer, **kwargs):
    overrides = kwargs.pop("overrides", {})
    return cls(
        model=model,
        reward_funcs=digit_reward,
        args=grpo_args(tmp_path, **overrides),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=build_char_tokenizer(),
        **kwargs,
    )


def _tiny(**config):
    model, _ = build_tiny_model(seed=0)
    for key, value in config.items():
        setattr(model.config, key, value)
    return model


@pytest.mark.parametrize(
    ("config", "described"),
    [
        pytest.param({"final_logit_softcapping": 30.0}, "softcap=30", id="softcap"),
        pytest.param({"logit_scale": 0.5}, "logit_scale=0.5", id="logit-scale"),
        pytest.param({"lm_head_multiplier": 2.0}, "logit_scale=2", id="lm-head-multiplier"),
        pytest.param({"logits_scaling": 4.0}, "logit_scale=0.25", id="logits-scaling"),
        pytest.param({"logit_scale": 1.0}, "none", id="neutral-logit-scale"),
    ],
)
def test_logit_transforms_are_served(tmp_path, config, described):
    """Served, not refused: the kernels apply the transform (equality with TRL: test_trl_families.py)."""
    trainer = use_tokrl_kernels(_trainer(tmp_path, _tiny(**config)), impl="torch")
    assert trainer.tokrl_kernels_path["log_probs"] == "tokrl_kernels.linear_logprob (impl=torch)"
    assert trainer.tokrl_kernels_path["logits"] == f"h @ W.T, logit transform: {described}"


def test_head_bias_is_refused(tmp_path):
    model = _tiny(tie_word_embeddings=False)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with pytest.raises(UnsupportedByTokrl, match="LM head has a bias"):
        _trainer(tmp_path, model, cls=TokrlGRPOTrainer)


@pytest.mark.parametrize(
    ("lora", "wrapper"),
    [
        # a trainable copy of the tied embedding: the head would stay the raw (tied) weight
        pytest.param(
            LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
            "embed_tokens.*ModulesToSaveWrapper",
            id="copy-of-tied-embedding",
        ),
        # LoRA on the tied embedding
        pytest.param(
            LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]),
            "embed_tokens.*lora",
            id="lora-on-tied-embedding",
        ),
    ],
)
def test_adapted_tied_embedding_is_refused(tmp_path, lora, wrapper):
    with pytest.raises(UnsupportedByTokrl, match=f"adapted LM head.*{wrapper}"):
        _trainer(tmp_path, _tiny(), cls=TokrlGRPOTrainer, peft_config=lora)


def test_lora_on_the_head_is_refused():
    """TRL refuses LoRA on lm_head itself; check_head_servable does too (the kernels read the raw weight)."""
    model = get_peft_model(_tiny(tie_word_embeddings=False), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(UnsupportedByTokrl, match="adapted LM head.*lm_head"):
        check_head_servable(model.get_base_model(), adapted=model)


def test_a_copy_of_an_untied_head_is_served(tmp_path):
    """modules_to_save=["lm_head"]: the copy's weight is what the kernels score and train (equality with TRL:
    test_trl_families.py)."""
    lora = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    trainer = _trainer(tmp_path, _tiny(tie_word_embeddings=False), cls=TokrlGRPOTrainer, peft_config=lora)
    assert trainer.tokrl_kernels_path["loss"] == "TRL's _compute_loss"


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
        _trainer(
            tmp_path,
            _tiny(),
            cls=TokrlGRPOTrainer,
            tokrl_mode="pg_loss",
            tokrl_impl="torch",
            overrides={"loss_type": "cispo"},
        )
    line = caplog.records[-1].getMessage()
    assert "tokrl_kernels.linear_logprob (impl=torch)" in line
    assert "fallback: loss_type='cispo'" in line
    assert "entropy: in-kernel" in line
