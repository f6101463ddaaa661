"""The tokrl sampler against HF generate and a full-sequence forward: greedy tokens equal generate's, seeded
sampling repeats and its log-probs equal a full forward's, cache equivalence, EOS handling, LoRA run unmerged,
the sampler switch."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.sampler.helpers import (
    assert_sampled_tokens_match_a_forward,
    attention_sinks_model,
    prompts_with_replay,
    qwen2_lora,
    tiny_model,
)
from tests.utils import assert_close_to_ref
from tokrl.models.forward import transformers_model
from tokrl.sampler import SAMPLERS, SamplingOptions, resolve_sampler
from tokrl.sampler.engine import decode_step, prefill, run_eager, start_state
from tokrl.sampler.rollout import generate, sample_groups
from tokrl.sampler.rows import left_pad


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def lora(tiny):
    return qwen2_lora(tiny[1]), tiny[1]


def _full_logits(model, rows):
    """Per row, the logits [len, V] of an unpadded full-sequence forward (no cache), in the model's dtype."""
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row])).logits[0] for row in rows]


@pytest.mark.parametrize("which", ["tiny", "qwen2-lora"])
@pytest.mark.parametrize("num_generations", [1, 3])
def test_greedy_equals_hf_generate(tiny, lora, which, num_generations):
    model, tok = tiny if which == "tiny" else lora
    prompts = prompts_with_replay(tok)
    kwargs = {"max_new_tokens": 9, "do_sample": False, "num_generations": num_generations}
    ours = generate(model, tok, prompts, sampler="tokrl", **kwargs)
    theirs = generate(model, tok, prompts, sampler="hf", **kwargs)
    assert ours.sampler == "tokrl" and theirs.sampler == "hf"
    assert ours.completions == theirs.completions
    assert len({tuple(c) for c in ours.completions}) > 2  # the rows differ: equality is not trivial
    assert all(len(set(c)) > 1 for c in ours.completions)  # and so do the steps of a row


def test_seeded_sampling_repeats_and_matches_a_full_forward(lora):
    model, tok = lora
    prompts = prompts_with_replay(tok)
    runs = {}
    for name in ["first", "again"]:
        torch.manual_seed(1234)
        runs[name] = sample_groups(
            model, tok, prompts, 4, max_new_tokens=8, temperature=0.7, top_p=0.9, sampler="tokrl"
        )
    assert runs["first"].completions == runs["again"].completions
    assert runs["first"].logprobs == runs["again"].logprobs
    assert len({tuple(c) for c in runs["first"].completions}) > 8  # the rows differ: the check is not trivial
    assert_sampled_tokens_match_a_forward(model, runs["first"], temperature=0.7, top_p=0.9)
    torch.manual_seed(4321)
    other = sample_groups(model, tok, prompts, 4, max_new_tokens=8, temperature=0.7, top_p=0.9, sampler="tokrl")
    assert other.completions != runs["first"].completions


@pytest.mark.parametrize("which", ["tiny", "qwen2-lora"])
def test_prefill_and_decode_logits_equal_a_full_forward(tiny, lora, which):
    model, tok = tiny if which == "tiny" else lora
    prompts, steps = prompts_with_replay(tok), 6
    body = transformers_model(model)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    _, first = prefill(body, ids, mask)  # [P, V]
    options = SamplingOptions(do_sample=True, temperature=1.3)
    state = start_state(body, prompts, 1, steps, options, eos_ids=[-1], pad_id=tok.pad_token_id)
    decoded = [first]
    for t in range(1, steps):
        state.at_step(t)
        decoded.append(decode_step(body, state, options).clone())  # steps x [P, V]
    rows = [p + row for p, row in zip(prompts, state.new_tokens.tolist(), strict=True)]
    full = _full_logits(model, rows)
    full64 = _full_logits(copy.deepcopy(model).double(), rows)
    for b, p in enumerate(prompts):
        span = slice(len(p) - 1, len(p) - 1 + steps)  # the columns predicting tokens 0 .. steps-1
        got = torch.stack([logits[b] for logits in decoded])  # [steps, V] fp32
        assert_close_to_ref(got, full[b][span], full64[b][span], atol=1e-5, name=f"logits of row {b}")
        logp32, logp64 = (
            (f[b][span] / 1.3).log_softmax(-1).gather(1, state.new_tokens[b][:, None])[:, 0] for f in (full, full64)
        )
        assert_close_to_ref(state.new_logps[b], logp32, logp64, atol=1e-5, name=f"log-probs of row {b}")


def test_lora_runs_unmerged_and_matters(lora):
    model, tok = lora
    prompts = prompts_with_replay(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_adapter = generate(model, tok, prompts, max_new_tokens=6, do_sample=False, sampler="tokrl").completions
    with model.disable_adapter():
        without = generate(model, tok, prompts, max_new_tokens=6, do_sample=False, sampler="tokrl").completions
    assert with_adapter != without  # the adapter is active in the sampler
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # nothing merged into (or left in) the base weights


def _run(model, tok, prompts, check_every, eos_ids):
    torch.manual_seed(99)
    options = SamplingOptions(do_sample=True, temperature=1.5)
    body = transformers_model(model)
    return run_eager(body, prompts, 8, 40, options, eos_ids, tok.pad_token_id, check_every=check_every)


def test_eos_ends_rows_and_early_exit_equals_running_to_the_end(tiny):
    model, tok = tiny
    prompts = prompts_with_replay(tok)
    eos = list(range(20, 200))  # frequent enough that every row ends well within 40 steps here
    early = _run(model, tok, prompts, 1, eos)
    late = _run(model, tok, prompts, 10**6, eos)  # never checks: decodes all 40 steps
    assert int(early.step) < 40 and int(late.step) == 40  # the loop did exit early
    assert torch.equal(early.new_tokens, late.new_tokens)  # what the early exit left is padding
    assert bool(early.done.all())
    for row in late.new_tokens.tolist():
        end = next(i for i, t in enumerate(row) if t in eos)
        assert all(t == tok.pad_token_id for t in row[end + 1 :])  # nothing after EOS but padding
    out = SAMPLERS["tokrl"]().generate(
        model,
        prompts,
        num_generations=8,
        max_new_tokens=40,
        options=SamplingOptions(do_sample=True),
        eos_ids=eos,
        pad_id=tok.pad_token_id,
    )
    tokens, logps = out
    assert all(row[-1] in eos and not set(row[:-1]) & set(eos) for row in tokens)
    assert [len(lp) for lp in logps] == [len(t) for t in tokens]


def test_sampler_switch_resolves_and_refuses(tiny):
    model, tok = tiny
    assert resolve_sampler("auto", model).name == "tokrl"
    assert resolve_sampler("hf", model).name == "hf"
    with pytest.raises(ValueError, match="sampler: unknown 'vllm'; expected one of: auto, hf, tokrl, tokrl-merged"):
        resolve_sampler("vllm", model)
    unsupported = attention_sinks_model(tok)
    assert resolve_sampler("auto", unsupported).name == "hf"  # what the engine cannot run falls back
    with pytest.raises(ValueError, match="sampler: 'tokrl' cannot run GptOssForCausalLM: .*s_aux"):
        resolve_sampler("tokrl", unsupported)


def test_the_engine_serves_any_configured_attention_and_restores_it(tiny):
    """The engine swaps in its own attention function for its forwards only: a model configured for
    flash attention (not installed here) samples through the engine, and keeps its setting afterwards."""
    model, tok = tiny
    model.config._attn_implementation = "flash_attention_2"
    try:
        out = generate(model, tok, prompts_with_replay(tok), max_new_tokens=4, do_sample=False, sampler="tokrl")
        assert out.sampler == "tokrl" and model.config._attn_implementation == "flash_attention_2"
    finally:
        model.config._attn_implementation = "sdpa"
