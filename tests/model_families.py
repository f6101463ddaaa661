"""Tiny random causal LMs of every family tokrl promises to serve, built from transformers configs.

Users bring Llama, Mistral, Gemma, Phi-3, OLMo-2, Qwen and MoE models; every feature is tested on these,
never on Qwen2 alone. Each model has tokrl's character vocabulary (so `tokrl.models.tokenizer.build_char_tokenizer`
is its tokenizer), 2 decoder layers, 4 query heads over 2 KV heads (GQA) where the family has GQA, and a
wide initialisation (`INIT_RANGE`) so greedy decoding changes token along a completion.

`build_family_model(name)` returns (model, tokenizer) in fp32 eval mode; `save_family_model(name, path)`
writes both with `save_pretrained`, so `tokrl.train(model=path)` loads them as a user's model.

`FAMILIES` maps a family name to a `Family`: its config factory and what tokrl is expected to do with it
(`engine`: whether the tokrl sampler should run it; `head`: the LM-head transform the kernels must apply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from tokrl.models.tokenizer import EOS_TOKEN, PAD_TOKEN, VOCAB, VOCAB_SIZE, build_char_tokenizer

INIT_RANGE = 0.3
VOCAB_ROWS = -(-VOCAB_SIZE // 8) * 8  # the tiny model's vocabulary, rounded up to a multiple of 8

# Shared by every family: small enough that a 2-step train runs in seconds.
_COMMON: dict[str, object] = {
    "vocab_size": VOCAB_ROWS,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": INIT_RANGE,
    "pad_token_id": VOCAB[PAD_TOKEN],
    "bos_token_id": VOCAB[EOS_TOKEN],
    "eos_token_id": VOCAB[EOS_TOKEN],
}


@dataclass(frozen=True)
class Family:
    """One model family: `config()` builds its tiny config; the rest says what tokrl should do with it.

    engine: True where the tokrl sampler is expected to run the model (auto picks it), False where auto
    must fall back to HF generate (every family here runs in the engine). tied: whether the
    LM head is the input embedding. moe: a mixture of experts (router aux loss). softcap / logit_scale: the
    final-logit transform the loss must apply.
    """

    config_class: str
    overrides: dict[str, object] = field(default_factory=dict)
    engine: bool = True
    tied: bool = False
    moe: bool = False
    softcap: float | None = None
    logit_scale: float = 1.0
    common: bool = True  # whether the _COMMON fields apply (GPT-2 names its fields differently)

    def config(self, **extra: object) -> PretrainedConfig:
        config_class = getattr(transformers, self.config_class)
        fields = {**(_COMMON if self.common else {}), **self.overrides, **extra}
        return config_class(**fields)


_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}

FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig"),
    "llama-tied": Family("LlamaConfig", {"tie_word_embeddings": True}, tied=True),
    "mistral": Family("MistralConfig", {"sliding_window": None}),
    "qwen2": Family("Qwen2Config", {"tie_word_embeddings": True}, tied=True),
    "qwen3": Family("Qwen3Config", {"head_dim": 16}),
    "gemma": Family("GemmaConfig", {"head_dim": 16}, tied=True),
    # Gemma 2: alternating sliding-window layers and a final logit soft-cap.
    "gemma2": Family(
        "Gemma2Config", {"head_dim": 16, "sliding_window": 16, "final_logit_softcapping": 30.0}, tied=True, softcap=30.0
    ),
    "gemma3": Family("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 16}, tied=True),
    "phi3": Family("Phi3Config", {"sliding_window": None}),
    "olmo2": Family("Olmo2Config"),
    "qwen2-moe": Family("Qwen2MoeConfig", {**_MOE, "shared_expert_intermediate_size": 64}, moe=True),
    "mixtral": Family(
        "MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None}, moe=True
    ),
    "cohere": Family("CohereConfig", {"logit_scale": 0.5}, tied=True, logit_scale=0.5),
    "granite": Family("GraniteConfig", {"logits_scaling": 4.0}, logit_scale=0.25),
    "gpt2": Family(
        "GPT2Config",
        {
            "vocab_size": VOCAB_ROWS,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 512,
            "initializer_range": INIT_RANGE,
            "bos_token_id": VOCAB[EOS_TOKEN],
            "eos_token_id": VOCAB[EOS_TOKEN],
            "pad_token_id": VOCAB[PAD_TOKEN],
        },
        tied=True,
        common=False,
    ),
}


def build_family_model(
    name: str, seed: int = 0, **config_overrides: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny random `name` model (fp32, CPU, eval mode, eager attention unless overridden) and the
    left-padding character tokenizer; the weights depend only on `seed` (the caller's RNG is untouched)."""
    family = FAMILIES[name]
    config = family.config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    tokenizer = build_char_tokenizer(padding_side="left")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer


def save_family_model(name: str, path: str | Path, seed: int = 0, **config_overrides: object) -> Path:
    """Write a tiny `name` model and its tokenizer with save_pretrained under `path` (a user's model dir)."""
    model, tokenizer = build_family_model(name, seed, **config_overrides)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def family_params(predicate: Callable[[Family], bool] = lambda f: True) -> list[str]:
    """Family names whose Family satisfies `predicate` (for pytest.mark.parametrize)."""
    return [name for name, family in FAMILIES.items() if predicate(family)]
