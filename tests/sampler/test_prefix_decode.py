"""The eager decode that forwards each distinct prefix once (tokrl/sampler/prefix_decode.py): the same draws as
a decode of every row from the same seed, fewer rows forwarded when rows share prefixes, each row's log-probs
those of a forward of its own prefix, EOS handling, on several model families."""

from __future__ import annotations

import pytest
import torch

from tests.model_families import build_family_model
from tests.sampler.helpers import (
    assert_sampled_tokens_match_a_forward,
    prompts_with_replay,
    qwen2_lora,
    tiny_model,
    with_lora,
)
from tokrl.models.forward import transformers_model
from tokrl.sampler import SamplingOptions
from tokrl.sampler.engine import run_eager
from tokrl.sampler.prefix_decode import run_prefix_shared
from tokrl.sampler.rollout import Rollout


def _both(model, tok, prompts, g, n, options, eos_ids, seed=7):
    """The prefix-shared decode and the every-row decode (engine.run_eager) from the same seed."""
    body = transformers_model(model)
    torch.manual_seed(seed)
    shared = run_prefix_shared(body, prompts, g, n, options, eos_ids, tok.pad_token_id)
    torch.manual_seed(seed)
    every_row = run_eager(body, prompts, g, n, options, eos_ids, tok.pad_token_id)
    return shared, every_row


@pytest.mark.parametrize("temperature", [0.4, 1.5])
def test_draws_equal_a_decode_of_every_row_with_fewer_rows_forwarded(temperature):
    model, tok = tiny_model()
    prompts, g, n = prompts_with_replay(tok), 8, 8
    options = SamplingOptions(do_sample=True, temperature=temperature)
    shared, every_row = _both(model, tok, prompts, g, n, options, eos_ids=[-1])
    # Same uniforms per row, same per-row distribution (up to the last bits of a matmul over fewer rows).
    same = (shared.new_tokens == every_row.new_tokens).all(-1)  # [B]
    assert same.float().mean() >= 0.99, f"{int((~same).sum())} of {same.numel()} rows differ"
    # fp32 rounding of the smaller matmuls only: a row read from the wrong node would be off by ~0.1 or more.
    torch.testing.assert_close(shared.new_logps[same], every_row.new_logps[same], rtol=1e-5, atol=1e-5)
    rows = len(prompts) * g
    assert shared.steps == n - 1
    assert shared.forward_rows < rows * (n - 1)  # rows that agree so far were forwarded once
    distinct = sum(
        len({(tuple(p), tuple(row[:t])) for p, row in zip(_rows(prompts, g), shared.new_tokens.tolist(), strict=True)})
        for t in range(1, n)
    )
    assert shared.forward_rows == distinct  # one forward row per distinct (prompt, prefix), no more


def _rows(prompts, g):
    return [p for p in prompts for _ in range(g)]


def test_rows_that_end_leave_the_forward_and_the_loop_ends_with_the_last():
    model, tok = tiny_model()
    prompts, g, n = prompts_with_replay(tok), 4, 40
    eos = list(range(20, 200))  # frequent: every row ends well within 40 steps
    shared, every_row = _both(model, tok, prompts, g, n, SamplingOptions(do_sample=True, temperature=1.5), eos)
    assert shared.steps < n - 1  # the loop ended early
    assert torch.equal(shared.new_tokens, every_row.new_tokens)
    live_prefixes = 0
    for row in shared.new_tokens.tolist():
        end = next(i for i, t in enumerate(row) if t in eos)
        assert all(t == tok.pad_token_id for t in row[end + 1 :])  # nothing after EOS but padding
        live_prefixes += end  # the steps 1 .. end fed this row's tokens 0 .. end - 1
    assert shared.forward_rows <= live_prefixes  # finished rows were not forwarded


# (config overrides, LoRA B's std): sliding windows narrower than a row (prompts up to 9 tokens + 6 new), so the
# window must move with each node; Gemma-2 narrower, or its soft-capped logits leave no two rows alike.
FAMILY_OVERRIDES = {
    "llama": ({}, 0.5),
    "mistral": ({"sliding_window": 4}, 0.5),
    "gemma2": ({"sliding_window": 4, "initializer_range": 0.1}, 0.02),
    "phi3": ({}, 0.5),
    "qwen2-moe": ({}, 0.5),
}


@pytest.mark.parametrize("family", list(FAMILY_OVERRIDES))
def test_each_rows_log_probs_are_a_forward_of_its_own_prefix(family):
    """A row sharing a node with others must get that node's distribution: its tokens sit inside the
    teacher-forced forward's nucleus and its log-probs equal that forward's, on families with GQA, sliding
    windows (gemma2, mistral), fused projections (phi3) and experts (qwen2-moe), LoRA on."""
    overrides, b_std = FAMILY_OVERRIDES[family]
    base, tok = build_family_model(family, **overrides)
    model = with_lora(base, b_std=b_std)
    prompts, g, n, temperature, top_p = prompts_with_replay(tok), 6, 6, 0.5, 0.9
    torch.manual_seed(3)
    out = run_prefix_shared(
        transformers_model(model), prompts, g, n, SamplingOptions(True, temperature, top_p), [-1], tok.pad_token_id
    )
    assert out.forward_rows < len(prompts) * g * (n - 1)  # rows did share prefixes: the check is not trivial
    tokens, logps = out.new_tokens.tolist(), out.new_logps.tolist()
    rollout = Rollout(prompts=_rows(prompts, g), completions=tokens, seconds=0.0, generated_tokens=0, logprobs=logps)
    assert_sampled_tokens_match_a_forward(model, rollout, temperature=temperature, top_p=top_p)


def test_lora_adapters_change_the_draws():
    _, tok = tiny_model()
    model = qwen2_lora(tok)
    body, prompts, options = transformers_model(model), prompts_with_replay(tok), SamplingOptions(do_sample=False)
    with_adapter = run_prefix_shared(body, prompts, 2, 6, options, [-1], tok.pad_token_id).new_tokens
    with model.disable_adapter():
        without = run_prefix_shared(body, prompts, 2, 6, options, [-1], tok.pad_token_id).new_tokens
    assert not torch.equal(with_adapter, without)
