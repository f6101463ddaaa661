"""A character-level tokenizer for the tiny test model, with the Hugging Face tokenizer interface.

Every character of printable ASCII, plus newline and tab, is one token; every other character is spelt as
its UTF-8 bytes, one byte token each, so any Unicode text round-trips (`decode(encode(text)) == text` for
NFC text; see below). Ids: 0 `<pad>`, 1 `<|endoftext|>` (EOS, Qwen2's name for it), 2 `<unk>` (kept for id
stability, never produced now), then the characters in `CHARACTERS` order (`VOCAB` maps each to its id),
then the 159 bytes that have no character token, in byte order (`BYTE_VOCAB` maps byte value -> id).
`VOCAB_SIZE` == 259 counts them all. The byte tokens come after every character id, so the ids of the
ASCII-only vocabulary of earlier versions are unchanged.

Why a byte-level BPE with no merges rather than a WordLevel model over characters: for a model directory
whose config says `model_type == "qwen2"`, transformers 5's `AutoTokenizer` ignores the saved
`tokenizer_class` and builds a `Qwen2Tokenizer`, which keeps the vocabulary and merges from
`tokenizer.json` but replaces the rest of the pipeline with Qwen2's NFC normaliser, byte-level
pre-tokenizer and decoder. A WordLevel character tokenizer would then lose every space and newline.
Storing each character under its byte-level name ("Ġ" for a space, "Ċ" for a newline) in a BPE with no
merges, plus a token for every remaining byte, gives one token per ASCII character and one per UTF-8 byte
otherwise under either pipeline, so `save_pretrained` + `AutoTokenizer.from_pretrained(path)` encodes
exactly as the tiny tokenizer does, with or without a model config beside it, and needs no custom code.
The tiny tokenizer applies the same NFC normalisation Qwen2Tokenizer forces, so both agree on every
input: text already in NFC (what keyboards and almost all files produce) comes back unchanged; a
decomposed sequence (e.g. "e" + U+0301) comes back as its canonically equivalent composed form ("é").
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Printable ASCII (space .. "~") plus the two whitespace characters SVAMP-like text and completions use.
CHARACTERS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")

# token -> id, characters as themselves; specials first so pad/eos/unk have small fixed ids.
VOCAB: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}

# byte value -> id for every byte that is not a character token (0x00-0x08, 0x0B-0x1F, 0x7F-0xFF): the
# fallback that spells any other character as its UTF-8 bytes. Appended after VOCAB so its ids never move.
_CHARACTER_BYTES = {ord(c) for c in CHARACTERS}
BYTE_VOCAB: dict[int, int] = {
    byte: len(VOCAB) + i for i, byte in enumerate(b for b in range(256) if b not in _CHARACTER_BYTES)
}

# Every id the tokenizer can produce is < VOCAB_SIZE (259).
VOCAB_SIZE: int = len(VOCAB) + len(BYTE_VOCAB)

# A minimal chat template ("role: content" lines, then "assistant: " as the generation prompt), all in the
# character vocabulary, so conversational (TRL-style) datasets work offline with the tiny model.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# The same byte -> printable-character map the Qwen2 (GPT-2 style) pipeline applies before the BPE model.
_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _byte_level_alphabet() -> dict[int, str]:
    """Byte value -> its printable name in byte-level BPE vocabularies (GPT-2's rule, which Qwen2 shares).

    Bytes that are printable Latin-1 characters other than space and soft hyphen ("!".."~", "¡".."¬",
    "®".."ÿ") name themselves; the other 68 bytes, in byte order, take the characters U+0100, U+0101, ...
    (so 0x00 -> "Ā", space 0x20 -> "Ġ", newline 0x0A -> "Ċ"). A test checks this against the tokenizers
    library's own ByteLevel pre-tokenizer on every byte of real UTF-8 text.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def build_char_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """Build the character tokenizer (len == VOCAB_SIZE == 259).

    padding_side: "left" (the default: generation appends on the right, so prompts are left-padded) or
    "right".
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    alphabet = _byte_level_alphabet()
    vocab = {token if token in SPECIAL_TOKENS else alphabet[ord(token)]: i for token, i in VOCAB.items()}
    vocab.update({alphabet[byte]: i for byte, i in BYTE_VOCAB.items()})
    # No merges: BPE leaves every (byte-level) character a token of its own.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False))
    # NFC as Qwen2Tokenizer applies it, so the tiny tokenizer and its saved-and-reloaded copy agree.
    backend.normalizer = normalizers.NFC()
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
