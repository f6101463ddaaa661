"""Rollout sampling: padding, EOS cutting, seeded reproducibility, group layout, the packed loss batch."""

from __future__ import annotations

import pytest
import torch

from tokrl.algorithms import GroupSelection
from tokrl.models.forward import hidden_states, lm_head_weight, set_training
from tokrl.models.tiny import build_tiny_model
from tokrl.sampler.rollout import decode, encode_prompts, generate, sample_groups
from tokrl.sampler.rows import cut_at_eos, eos_token_ids, left_pad
from tokrl.stages.select import gather_rows, pack_sequences


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return build_tiny_model(seed=0)


def test_left_pad_aligns_row_ends():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.int64


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([4, 5, 1, 0, 0], [4, 5, 1]),  # EOS kept, padding after it dropped
        ([1, 7], [1]),  # EOS first: a one-token completion
        ([4, 5, 6], [4, 5, 6]),  # no EOS: ran to max_new_tokens, nothing stripped
        ([4, 0, 6], [4, 0, 6]),  # a sampled pad id inside an unfinished row is a real token
    ],
    ids=["eos-mid", "eos-first", "no-eos", "pad-inside"],
)
def test_cut_at_eos(tokens, expected):
    assert cut_at_eos(tokens, [1]) == expected


def test_pack_sequences_start_points_at_the_last_prompt_token():
    batch = pack_sequences([[10, 11], [12, 13, 14]], [[20, 21], []], pad_id=0)
    width = batch.input_ids.shape[1]
    assert batch.input_ids.tolist() == [[10, 11, 20, 21], [0, 12, 13, 14]]
    flat = batch.input_ids.reshape(-1)
    # start[b] is the flat position of the last prompt token: it predicts continuation token 0.
    assert flat[batch.start].tolist() == [11, 14]
    assert batch.start.tolist() == [1, width + 3]


@pytest.mark.parametrize(
    ("prompts", "continuations"),
    [
        ([[10, 11], [12, 13, 14], [15]], [[20, 21], [], [22, 23, 24, 25]]),  # ragged on both sides
        ([[5]], [[]]),  # a single one-token row
        ([[], []], [[], []]),  # nothing at all: a [2, 0] batch
        ([], []),  # no rows: a [0, 0] batch
    ],
    ids=["ragged", "one-token", "empty-rows", "no-rows"],
)
def test_pack_sequences_is_left_pad_of_the_joined_rows(prompts, continuations):
    # pack_sequences builds its tensors without left_pad's per-row writes; they must be left_pad's.
    batch = pack_sequences(prompts, continuations, pad_id=3)
    ids, mask = left_pad([p + c for p, c in zip(prompts, continuations, strict=True)], pad_id=3)
    assert batch.input_ids.shape == ids.shape and batch.attention_mask.shape == mask.shape
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.start.dtype == torch.int64


def test_gather_rows_offsets_each_group_by_its_index():
    def selection(completion, units):
        k = len(completion)
        return GroupSelection(
            torch.tensor(completion, dtype=torch.int64),
            torch.arange(k),
            torch.arange(k) + 7,
            torch.ones(k),
            torch.full((k,), 2.0),
            norm_units=units,
            zero_std=k == 0,
        )

    rows = gather_rows([selection([1, 0], 2.0), selection([], 1.0), selection([3, 3, 2], 1.0)], group_size=4)
    assert rows.row.tolist() == [1, 0, 11, 11, 10]  # group g's completion c is rollout row g * 4 + c
    assert rows.position.tolist() == [0, 1, 0, 1, 2] and rows.token.tolist() == [7, 8, 7, 8, 9]
    assert rows.weight.tolist() == [0.5] * 5  # 2 / (2 + 1 + 1) norm units


def test_set_training_reaches_every_module(tiny):
    model, _ = tiny
    model.eval()
    model.model.layers[0].train()  # the root says eval, one layer says train
    set_training(model, False)
    assert not any(m.training for m in model.modules())
    set_training(model, True)
    assert all(m.training for m in model.modules())
    model.eval()


def test_decode_of_repeated_rows_equals_decoding_each(tiny):
    _, tok = tiny
    rows = [encode_prompts(tok, [text])[0] for text in ("12*3=", "408", "12*3=", "", "408", "7")]
    assert decode(tok, rows) == [tok.decode(r, skip_special_tokens=True) for r in rows]
    assert decode(tok, []) == []


def test_sampling_is_reproducible_under_a_seed_and_layout_is_grouped(tiny):
    model, tok = tiny
    prompts = encode_prompts(tok, ["12*3=", "45*67="])
    torch.manual_seed(123)
    a = sample_groups(model, tok, prompts, 3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    torch.manual_seed(123)
    b = sample_groups(model, tok, prompts, 3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    assert a.completions == b.completions
    assert len(a.completions) == 6 and a.prompts[:3] == [prompts[0]] * 3 and a.prompts[3:] == [prompts[1]] * 3
    eos = eos_token_ids(tok)
    for c in a.completions:
        assert 1 <= len(c) <= 6
        assert all(t not in eos for t in c[:-1])  # EOS, if any, only at the end
    assert a.generated_tokens == sum(len(c) for c in a.completions) and a.tokens_per_second > 0


def test_greedy_with_left_padding_matches_unpadded(tiny):
    model, tok = tiny
    prompts = encode_prompts(tok, ["7*8=", "123*456="])  # different lengths: the short one is padded
    batched = generate(model, tok, prompts, max_new_tokens=5, do_sample=False).completions
    single = [generate(model, tok, [p], max_new_tokens=5, do_sample=False).completions[0] for p in prompts]
    assert batched == single


def test_generate_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    generate(model, tok, encode_prompts(tok, ["1*2="]), max_new_tokens=2, do_sample=False)
    assert model.training
    model.eval()


def test_decode_drops_eos(tiny):
    _, tok = tiny
    ids = tok("408", add_special_tokens=False)["input_ids"] + eos_token_ids(tok)
    assert decode(tok, [ids]) == ["408"]


def test_packed_hidden_rows_match_unpadded_logits(tiny):
    model, tok = tiny
    prompts = encode_prompts(tok, ["1*2=", "345*678="])
    completions = [[20, 21, 22], [23]]
    batch = pack_sequences(prompts, [c[:-1] for c in completions], tok.pad_token_id)
    with torch.no_grad():
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)  # [B, L, D]
        flat = hidden.reshape(-1, hidden.shape[-1])  # [B * L, D]
        for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0]  # [len, V]
            for t in range(len(c)):
                got = flat[batch.start[b] + t] @ lm_head_weight(model).T  # [V]
                torch.testing.assert_close(got, logits[len(p) + t - 1], rtol=1e-4, atol=1e-4)
