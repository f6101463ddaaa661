"""Models and prompts the sampler tests share (small: the whole sampler suite stays within seconds)."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokrl.models import apply_lora, build_tiny_model
from tokrl.rollout import encode_prompts

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
        vocab_size=104, hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = apply_lora(Qwen2ForCausalLM(config), r=4, alpha=8, dropout=0.1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)  # peft starts B at zero: the adapter would be a no-op
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
