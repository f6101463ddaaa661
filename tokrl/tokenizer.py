"""A character-level tokenizer for the tiny test model, with the Hugging Face tokenizer interface.

Every character of printable ASCII, plus newline and tab, is one token; any other character becomes
`<unk>` (one per UTF-8 byte). Ids: 0 `<pad>`, 1 `<|endoftext|>` (EOS, Qwen2's name for it), 2 `<unk>`,
then the characters in `CHARACTERS` order (`VOCAB` maps each to its id).

Why a byte-level BPE with no merges rather than a WordLevel model over characters: for a model directory
whose config says `model_type == "qwen2"`, transformers 5's `AutoTokenizer` ignores the saved
`tokenizer_class` and builds a `Qwen2Tokenizer`, which keeps the vocabulary and merges from
`tokenizer.json` but replaces the rest of the pipeline with Qwen2's byte-level pre-tokenizer and decoder.
A WordLevel character tokenizer would then lose every space and newline. Storing each character under
its byte-level name ("Ġ" for a space, "Ċ" for a newline) in a BPE with no merges gives one token per
character under either pipeline, so `save_pretrained` + `AutoTokenizer.from_pretrained(path)` round-trips
exactly, with or without a model config beside it, and needs no custom code. (One difference remains:
`Qwen2Tokenizer` builds its BPE without an unknown token, so it drops characters outside the vocabulary
instead of mapping them to `<unk>`; the SVAMP and multiplication texts are plain ASCII.)
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Printable ASCII (space .. "~") plus the two whitespace characters SVAMP-like text and completions use.
CHARACTERS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")

# token -> id, characters as themselves; specials first so pad/eos/unk have small fixed ids.
VOCAB: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}

# A minimal chat template ("role: content" lines, then "assistant: " as the generation prompt), all in the
# character vocabulary, so conversational (TRL-style) datasets work offline with the tiny model.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# The same byte -> printable-character map the Qwen2 (GPT-2 style) pipeline applies before the BPE model.
_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _byte_level_name(character: str) -> str:
    """The name a character has inside a byte-level vocabulary, e.g. " " -> "Ġ", "\\n" -> "Ċ", "a" -> "a"."""
    return "".join(piece for piece, _ in _BYTE_LEVEL.pre_tokenize_str(character))


def build_char_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """Build the character tokenizer (len == len(VOCAB) == 100).

    padding_side: "left" (the default: generation appends on the right, so prompts are left-padded) or
    "right".
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    vocab = {token if token in SPECIAL_TOKENS else _byte_level_name(token): i for token, i in VOCAB.items()}
    # No merges: BPE leaves every (byte-level) character a token of its own.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False))
    backend.pre_tokenizer = _BYTE_LEVEL
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side=padding_side,
        # Keep " ," and " ." exactly as generated; the default clean-up would rewrite them.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
