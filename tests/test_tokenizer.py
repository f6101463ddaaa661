"""The character tokenizer: exact round trip (ASCII and any Unicode), special ids, left padding, save and reload."""

from __future__ import annotations

import random
import unicodedata

import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from tokrl.models.tiny import tiny_config
from tokrl.models.tokenizer import (
    BYTE_VOCAB,
    CHARACTERS,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    VOCAB,
    VOCAB_SIZE,
    _byte_level_alphabet,
    build_char_tokenizer,
)

# SVAMP-like text: double spaces, leading/trailing blanks, digits, decimals, punctuation before and after
# spaces (" ," would be "cleaned up" by a default HF decode), a tab, and newlines (blank line included).
SVAMP_LIKE = [
    "Jack had 8 pens and Mary had 5 pens. Jack gave 3 pens to Mary. How many pens does Jack have now?",
    "  There are 12.5 kg of rice , and 3/4 of it is eaten ; what's left?\nAnswer: 3.125\n\n#### 3.125  ",
    'Q: "What is 7 * (6 - 2) + 10 % 3?"\tA: 29 {ok} [sure] <fine> `x` ~y_z^ | \\ @#$&=!',
    "\n",
    "",
]

# Beyond ASCII: the multiplication sign the issue saw dropped, accents, the euro sign (3 bytes), an emoji
# (4 bytes), CJK, right-to-left script, a combining mark already in NFC, control bytes, the EOS-like text
# "<|endoftext" without its closing bar, and a NUL.
UNICODE = [
    "237×2=",
    "Crème brûlée coûte 5 € ; naïve façade",
    "😀 👍🏽 🇫🇷",
    "中文 日本語 한국어",
    "שלום مرحبا",
    "ǅ ẞ Ω ﬁ",
    "\x00\x01\x7f\x1b[0m",
    "<|endoftext 1",
]


def _random_text(seed: int, length: int = 200) -> str:
    # Fresh random code points from every plane in use (surrogates excluded), NFC-normalised first.
    rng = random.Random(seed)
    points = [
        rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000)])
        for _ in range(length)
    ]
    return unicodedata.normalize("NFC", "".join(map(chr, points)))


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_vocabulary_covers_printable_ascii_and_newline():
    # Specials first at fixed ids, then one id per character; ids are dense 0..len-1.
    assert list(VOCAB)[:3] == [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    assert sorted(VOCAB.values()) == list(range(len(VOCAB)))
    assert all(chr(c) in VOCAB for c in range(32, 127))
    assert "\n" in VOCAB and len(CHARACTERS) == len(set(CHARACTERS))
    # The ASCII ids of the earlier 100-token vocabulary never move: " " 3, "0" 19, "~" 97, "\n" 98, "\t" 99.
    assert (VOCAB[" "], VOCAB["0"], VOCAB["~"], VOCAB["\n"], VOCAB["\t"], len(VOCAB)) == (3, 19, 97, 98, 99, 100)
    # Byte tokens follow, one per byte without a character token: 256 - 97 = 159, dense ids 100..258.
    assert sorted(BYTE_VOCAB.values()) == list(range(len(VOCAB), VOCAB_SIZE)) and VOCAB_SIZE == 259
    assert set(BYTE_VOCAB) == set(range(256)) - {ord(c) for c in CHARACTERS}
    assert len(build_char_tokenizer()) == VOCAB_SIZE


def test_byte_alphabet_matches_the_tokenizers_library():
    # Our byte -> name table must be the one the ByteLevel pre-tokenizer (ours and Qwen2's) applies, or the
    # byte tokens would never be hit. Every byte 0x00..0xF4 occurs in the UTF-8 of this text.
    text = (
        "".join(chr(c) for c in range(1, 0x800)) + "\x00" + "".join(chr(c) for c in (0x1000, 0xF000, 0x10000, 0x100000))
    )
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    expected = "".join(piece for piece, _ in pre.pre_tokenize_str(text))
    alphabet = _byte_level_alphabet()
    assert "".join(alphabet[b] for b in text.encode("utf-8")) == expected
    assert len(set(alphabet.values())) == 256


@pytest.mark.parametrize("text", SVAMP_LIKE, ids=["svamp", "spaces-newlines", "punctuation", "newline", "empty"])
def test_round_trip_is_exact_one_token_per_character(tok, text):
    ids = tok.encode(text)
    assert len(ids) == len(text)  # no BOS/EOS added, no merges
    assert ids == [VOCAB[c] for c in text]
    assert tok.decode(ids) == text


def test_special_ids_and_unknown_characters(tok):
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    # The EOS string in text is one special token (a completion's end), stripped by skip_special_tokens.
    ids = tok.encode("12" + EOS_TOKEN)
    assert ids == [VOCAB["1"], VOCAB["2"], tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "12"
    assert tok.decode([tok.pad_token_id, *ids[:2]], skip_special_tokens=True) == "12"
    # Non-ASCII characters are spelt as their UTF-8 bytes (2 + 3), never <unk>.
    assert tok.encode("é€") == [BYTE_VOCAB[b] for b in "é€".encode()]
    assert tok.unk_token_id not in tok.encode("".join(UNICODE))


@pytest.mark.parametrize(
    "text", UNICODE, ids=["times", "accents", "emoji", "cjk", "rtl", "ligature", "control", "eos-ish"]
)
def test_any_unicode_round_trips_through_byte_tokens(tok, text):
    ids = tok.encode(text)
    # ASCII characters keep their one token; everything else is one token per UTF-8 byte.
    expected = [VOCAB[c] if c in VOCAB else BYTE_VOCAB[b] for c in text for b in ([0] if c in VOCAB else c.encode())]
    assert ids == expected
    assert tok.decode(ids) == text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_unicode_round_trips(tok, seed):
    text = _random_text(seed)
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < VOCAB_SIZE
    assert tok.decode(ids) == text


def test_non_nfc_text_comes_back_composed_as_qwen2_does(tok):
    # Qwen2Tokenizer forces NFC; the tiny tokenizer applies it too so both agree on every input.
    decomposed = "e\u0301te\u0301"  # "été" spelt with combining accents
    assert tok.decode(tok.encode(decomposed)) == "été" == unicodedata.normalize("NFC", decomposed)


def test_batch_padding_left(tok):
    texts = ["a b", "hello\nworld", "7"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert tok.padding_side == "left"
    ids, mask = batch["input_ids"], batch["attention_mask"]  # [3, 11] each
    assert ids.shape == mask.shape == (3, len(texts[1]))
    for row, text in enumerate(texts):
        pad = ids.shape[1] - len(text)
        assert mask[row].tolist() == [0] * pad + [1] * len(text)
        assert ids[row, :pad].eq(tok.pad_token_id).all()
        assert tok.decode(ids[row, pad:]) == text
        assert tok.decode(ids[row], skip_special_tokens=True) == text


def test_padding_side_right_and_invalid():
    batch = build_char_tokenizer(padding_side="right")(["ab", "abcd"], padding=True)
    assert batch["attention_mask"][0] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="padding_side"):
        build_char_tokenizer(padding_side="middle")


def test_save_pretrained_and_autotokenizer_by_path(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # no custom code: all of it is in tokenizer.json
    assert loaded.padding_side == "left"
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    assert loaded.get_vocab() == tok.get_vocab()
    for text in SVAMP_LIKE + UNICODE + [_random_text(3)]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    a = tok(SVAMP_LIKE, padding=True, return_tensors="pt")
    b = loaded(SVAMP_LIKE, padding=True, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])


def test_autotokenizer_beside_a_qwen2_config_keeps_characters(tok, tmp_path):
    # With a qwen2 config.json in the directory, transformers builds a Qwen2Tokenizer (byte-level
    # pipeline) whatever tokenizer_class says; spaces and newlines must survive that too.
    tiny_config().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 1, "left")
    assert type(loaded).__name__ == "Qwen2Tokenizer"  # the pipeline that used to drop non-ASCII characters
    for text in SVAMP_LIKE + UNICODE + [_random_text(4), "e\u0301"]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))
    for text in UNICODE + [_random_text(4)]:
        assert loaded.decode(loaded.encode(text)) == text
