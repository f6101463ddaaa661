"""The character tokenizer: exact round trip, special ids, left padding, save and reload by path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from tokrl.models import tiny_config
from tokrl.tokenizer import CHARACTERS, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, VOCAB, build_char_tokenizer

# SVAMP-like text: double spaces, leading/trailing blanks, digits, decimals, punctuation before and after
# spaces (" ," would be "cleaned up" by a default HF decode), a tab, and newlines (blank line included).
SVAMP_LIKE = [
    "Jack had 8 pens and Mary had 5 pens. Jack gave 3 pens to Mary. How many pens does Jack have now?",
    "  There are 12.5 kg of rice , and 3/4 of it is eaten ; what's left?\nAnswer: 3.125\n\n#### 3.125  ",
    'Q: "What is 7 * (6 - 2) + 10 % 3?"\tA: 29 {ok} [sure] <fine> `x` ~y_z^ | \\ @#$&=!',
    "\n",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_vocabulary_covers_printable_ascii_and_newline():
    # Specials first at fixed ids, then one id per character; ids are dense 0..len-1.
    assert list(VOCAB)[:3] == [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    assert sorted(VOCAB.values()) == list(range(len(VOCAB)))
    assert all(chr(c) in VOCAB for c in range(32, 127))
    assert "\n" in VOCAB and len(CHARACTERS) == len(set(CHARACTERS))
    assert len(build_char_tokenizer()) == len(VOCAB)


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
    assert tok.encode("é€") == [tok.unk_token_id] * 5  # one <unk> per UTF-8 byte (2 + 3)


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
    for text in SVAMP_LIKE:
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
    for text in SVAMP_LIKE:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
