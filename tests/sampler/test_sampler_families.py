"""The tokrl engine on every model family tokrl serves (tests/model_families.py): greedy tokens equal HF
generate's, seeded tokens match a full forward (log-probs, nucleus), sliding windows narrower than the cache,
LoRA on several families, and `auto`'s choice (with its one log line and no traceback where the engine cannot
run a model)."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.model_families import FAMILIES, build_family_model, family_params
from tests.sampler.helpers import assert_sampled_tokens_match_a_forward, attention_sinks_model, with_lora
from tokrl.models.forward import transformers_model
from tokrl.sampler import SAMPLERS, resolve_sampler
from tokrl.sampler import support as support_module
from tokrl.sampler.rollout import encode_prompts, generate, sample_groups

# Gemma-2/3 (scaled embeddings, soft-capped logits) at the shared wide initialisation put all the mass on
# one token, and tokens equal to generate's would prove nothing: they are built narrower here.
VARIED = {"gemma2": {"initializer_range": 0.02}, "gemma3": {"initializer_range": 0.02}}


def _build(name: str, **overrides: object):
    return build_family_model(name, **{**VARIED.get(name, {}), **overrides})


def _prompts(tok) -> list[list[int]]:
    """Different lengths (left padding) and a T-SPMO-like replay row (prompt + completion prefix)."""
    rows = encode_prompts(tok, ["7*8=", "123*456=", "1*2="])
    return [*rows, rows[1] + encode_prompts(tok, ["56"])[0]]


def _same_greedy(model, tok, prompts, n=10, g=2) -> list[list[int]]:
    kwargs = {"max_new_tokens": n, "do_sample": False, "num_generations": g}
    ours = generate(model, tok, prompts, sampler="tokrl", **kwargs)
    theirs = generate(model, tok, prompts, sampler="hf", **kwargs)
    assert (ours.sampler, theirs.sampler) == ("tokrl", "hf")
    assert ours.completions == theirs.completions
    return ours.completions


def _same_seeded(model, tok, prompts, n=10, g=3) -> list[list[int]]:
    """Seeded tokrl rows: they repeat under the seed and match a full forward (the oracle of the helper)."""
    runs = []
    for _ in range(2):
        torch.manual_seed(77)
        runs.append(
            sample_groups(model, tok, prompts, g, max_new_tokens=n, temperature=0.8, top_p=0.9, sampler="tokrl")
        )
    assert runs[0].completions == runs[1].completions
    assert_sampled_tokens_match_a_forward(model, runs[0], temperature=0.8, top_p=0.9)
    return runs[0].completions


def _varied(completions: list[list[int]], greedy: bool = False) -> None:
    """Equality means something only if rows (and, when sampling, the steps of a row) differ. Some tiny
    random models (Gemma's scaled embeddings) repeat one token per prompt under greedy decoding."""
    assert len({tuple(c) for c in completions}) >= 2
    if not greedy:
        assert len({tuple(c) for c in completions}) > 2
        assert sum(len(set(c)) > 1 for c in completions) > len(completions) // 2


@pytest.mark.parametrize("name", family_params(lambda f: f.engine))
def test_greedy_tokens_equal_hf_generate_and_seeded_ones_match_a_forward(name):
    model, tok = _build(name)
    assert resolve_sampler("auto", model).name == "tokrl"  # auto runs the engine on every family
    prompts = _prompts(tok)
    _varied(_same_greedy(model, tok, prompts), greedy=True)
    _varied(_same_seeded(model, tok, prompts))


# Windows of 3-5 columns over prompts of up to 11 tokens plus 10 new ones: most queries see fewer columns
# than the cache holds, so the engine's sliding-window masking decides the tokens.
NARROW_WINDOWS = {
    "gemma2": {"sliding_window": 4},
    "gemma3": {"sliding_window": 4},
    "mistral": {"sliding_window": 4},
    "phi3": {"sliding_window": 5},
    "mixtral": {"sliding_window": 3},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
}


@pytest.mark.parametrize("name", sorted(NARROW_WINDOWS))
def test_sliding_window_narrower_than_the_cache_equals_hf_generate(name):
    model, tok = _build(name, **NARROW_WINDOWS[name])
    assert resolve_sampler("auto", model).name == "tokrl"
    prompts = _prompts(tok)
    _varied(_same_greedy(model, tok, prompts), greedy=True)
    _varied(_same_seeded(model, tok, prompts))


@pytest.mark.parametrize("name", ["llama", "gemma2", "phi3", "qwen2-moe", "mixtral"])
def test_lora_families_equal_hf_generate_and_the_adapter_matters(name):
    base, tok = _build(name)
    model = with_lora(base)
    prompts = _prompts(tok)
    _same_greedy(model, tok, prompts)
    with_adapter = _same_seeded(model, tok, prompts)
    with model.disable_adapter():
        assert _same_seeded(model, tok, prompts) != with_adapter  # the adapter is live in the engine


def test_an_unsupported_model_falls_back_to_hf_with_one_log_line(caplog):
    _, tok = build_family_model("llama")
    model = attention_sinks_model(tok)
    reason = SAMPLERS["tokrl"]().unsupported_reason(model)
    assert reason is not None and "s_aux" in reason and "\n" not in reason
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        first = generate(model, tok, _prompts(tok), max_new_tokens=4, do_sample=False, sampler="auto")
        generate(model, tok, _prompts(tok), max_new_tokens=4, do_sample=False, sampler="auto")
    assert first.sampler == "hf" and len(first.completions) == 4
    lines = [r.getMessage() for r in caplog.records if "sampler auto" in r.getMessage()]
    assert len(lines) == 1 and "s_aux" in lines[0] and "hf" in lines[0], lines  # once per model
    with pytest.raises(ValueError, match=r"sampler: 'tokrl' cannot run GptOssForCausalLM: .*s_aux.*--sampler hf"):
        resolve_sampler("tokrl", model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_probe_catches_a_model_that_ignores_the_engine(monkeypatch, dtype):
    """A fault that raises nothing (here: the mask ignored, so pads are attended) is caught numerically, in
    bf16 too (where one token over the tolerance is let through: an MoE router's near-tie)."""
    model, _ = build_family_model("llama")
    body = transformers_model(model.to(dtype))
    assert support_module.probe_reason(body) is None
    monkeypatch.setattr(
        "tokrl.sampler.engine.additive_mask", lambda visible, dtype: torch.zeros(visible.shape, dtype=dtype)
    )
    reason = support_module.probe_reason(body)
    assert reason is not None and "differ from the model's own forward" in reason


def test_probe_leaves_model_rng_and_mode_as_they_were():
    model, _ = build_family_model("qwen3")
    model.train()
    state = torch.random.get_rng_state()
    assert support_module.probe_reason(transformers_model(model)) is None
    assert model.training and torch.equal(torch.random.get_rng_state(), state)


def test_every_family_is_listed():
    """The families tokrl serves; the table must keep them (the parametrised tests run over it)."""
    wanted = {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "olmo2",
        "qwen2-moe",
        "mixtral",
    }
    assert wanted <= {name for name, family in FAMILIES.items() if family.engine}
