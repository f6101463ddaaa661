"""The tiny test model: a small Qwen2-architecture model with tokrl's character tokenizer.

`"tiny"` (`tokrl.models.names.TINY_NAME`) names it wherever a model name is accepted; it saves and loads back by
path like any Hugging Face model.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from tokrl.models.tokenizer import EOS_TOKEN, PAD_TOKEN, VOCAB, VOCAB_SIZE, build_char_tokenizer

# The tiny model's vocabulary before the byte fallback: the characters, rounded up to a multiple of 8.
CHARACTER_VOCAB_SIZE = -(-len(VOCAB) // 8) * 8


def tiny_config(**overrides: object) -> Qwen2Config:
    """The tiny model's Qwen2Config; every default lives here and any field can be overridden.

    Defaults: the character vocabulary (259 tokens: specials, characters, byte fallback) rounded up to 264
    with unused ids, hidden 128, 2 layers, 4 query heads sharing 2 KV heads (GQA, as in Qwen2),
    intermediate 4 x hidden, tied input/output embeddings (as in Qwen2-1.5B, so the LM head weight is the
    embedding), 2048 positions.
    About 0.5 M parameters; HF `generate` with KV cache at batch 32 measured about 8,000 new tokens/s on
    an idle 2-core CPU (hidden 192: ~7,000; hidden 256: ~5,700; 4 layers roughly halve it).
    `intermediate_size` follows an overridden `hidden_size` unless it is overridden too. Unknown keys raise
    TypeError (Qwen2Config itself would silently keep a misspelt key).
    """
    known = set(Qwen2Config().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"tiny_config got unknown Qwen2Config fields: {unknown}")
    hidden = int(overrides.get("hidden_size", 128))
    defaults: dict[str, object] = {
        # A multiple of 8 keeps the embedding matmul on aligned shapes; ids >= VOCAB_SIZE are never produced.
        "vocab_size": -(-VOCAB_SIZE // 8) * 8,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "pad_token_id": VOCAB[PAD_TOKEN],
        # Like Qwen2, the end-of-text token doubles as BOS; the prompts never start with it.
        "bos_token_id": VOCAB[EOS_TOKEN],
        "eos_token_id": VOCAB[EOS_TOKEN],
        "use_cache": True,
    }
    config = Qwen2Config(**{**defaults, **overrides})
    if config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {VOCAB_SIZE} (the character vocabulary), got {config.vocab_size}")
    return config


def build_tiny_model(seed: int = 0, **config_overrides: object) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the tiny Qwen2 model (fp32, CPU, eval mode) and its left-padding character tokenizer.

    The weights depend only on `seed`: initialisation runs under a forked RNG seeded with it, so the
    caller's global RNG state is left untouched. The model is first drawn with the character vocabulary alone
    (CHARACTER_VOCAB_SIZE rows, as before the byte fallback existed), then the byte tokens' embedding rows are
    appended, drawn after everything else: adding tokens never changes the other weights of a seed.
    """
    config = tiny_config(**config_overrides)
    base_rows = min(CHARACTER_VOCAB_SIZE, config.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(**{**config.to_dict(), "vocab_size": base_rows}))
        extra = torch.empty(config.vocab_size - base_rows, config.hidden_size).normal_(0.0, config.initializer_range)
        model.resize_token_embeddings(config.vocab_size, mean_resizing=False)  # draws too: inside the fork
    with torch.no_grad():
        model.get_input_embeddings().weight[base_rows:] = extra  # [V - base, D] (the tied LM head too)
    model.config.vocab_size = config.vocab_size
    tokenizer = build_char_tokenizer(padding_side="left")
    sync_generation_ids(model, tokenizer)
    return model.eval(), tokenizer


def sync_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give generate the tokenizer's pad/eos ids where the model's generation config lacks them."""
    generation_config = model.generation_config
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = tokenizer.eos_token_id
