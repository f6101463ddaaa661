"""Models and prompts the sampler tests share (small: the whole sampler suite stays within seconds)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GptOssConfig, Qwen2Config, Qwen2ForCausalLM

from tests.model_families import _COMMON as FAMILY_COMMON
from tokrl.models.lora import apply_lora
from tokrl.models.tiny import build_tiny_model
from tokrl.sampler.rollout import encode_prompts

# A wide initialisation makes the random models' next-token choices vary along a completion (with the
# default 0.02 every greedy step picks the same token, and equality with generate would prove little).
INIT_RANGE = 0.3


def tiny_model():
    torch.set_num_threads(1)
    return build_tiny_model(seed=0, initializer_range=INIT_RANGE)


def prompts_with_replay(tokenizer) -> list[list[int]]:
    """Left-padding cases: prompts of different lengths, and T-SPMO replay rows (prompt + completion prefix)."""
    rows = encode_prompts(tokenizer, ["7*8=", "123*456=", "1*2=", "98*76="])
    replay = rows[1] + tokenizer("5608", add_special_tokens=False)["input_ids"]
    return [*rows, replay, rows[2] + [rows[2][-1]] * 3]


def qwen2_lora(tokenizer):
    """A small random Qwen2 (3 layers, GQA, not tied) wrapped with a LoRA whose B is non-zero, eval mode."""
    config = Qwen2Config(
        vocab_size=104,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = apply_lora(Qwen2ForCausalLM(config), r=4, alpha=8, dropout=0.1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)  # peft starts B at zero: the adapter would be a no-op
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def with_lora(model, r: int = 4, seed: int = 1, b_std: float = 0.5):
    """`model` wrapped by peft with a LoRA on every linear layer of the decoder (peft's "all-linear": never
    the LM head; MoE expert weights included, whose peft wrapper needs dropout 0), its B drawn non-zero
    (peft starts B at zero: the adapter would be a no-op); eval mode."""
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, config)
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, b_std)
    return wrapped.eval()


def attention_sinks_model(tokenizer):
    """A tiny GPT-OSS (attention sinks, which the engine's attention does not implement): auto must fall
    back to HF generate for it."""
    config = GptOssConfig(
        **{
            **FAMILY_COMMON,
            "head_dim": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
