"""The `tokrl-merged` sampler: LoRA merged into copies of the base weights for sampling. Same tokens as HF
generate on the unmerged model (fp32), log-probs of the trained policy, the model left exactly as it was,
optimiser steps seen by the next call, graphs, and refusals where merging would change the policy."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.model_families import build_family_model
from tests.sampler.helpers import (
    assert_sampled_tokens_match_a_forward,
    prompts_with_replay,
    teacher_forced_logits,
    with_lora,
)
from tests.utils import assert_close_to_ref
from tokrl.sampler import SAMPLERS, SamplingOptions, cuda_graph, registry, resolve_sampler
from tokrl.sampler.merged import merge_reason, merged_weights
from tokrl.sampler.rollout import generate, sample_groups


def _tokens(model, tok, prompts, sampler, seed=None, n=8):
    if seed is None:
        return generate(model, tok, prompts, max_new_tokens=n, do_sample=False, num_generations=2, sampler=sampler)
    torch.manual_seed(seed)
    return sample_groups(model, tok, prompts, 3, max_new_tokens=n, temperature=0.8, top_p=0.9, sampler=sampler)


@pytest.mark.parametrize("name", ["llama", "gpt2", "olmo2"])  # GPT-2's Conv1D LoRA merges transposed
def test_merged_sampling_equals_the_unmerged_model(name):
    base, tok = build_family_model(name)
    model = with_lora(base)
    prompts = prompts_with_replay(tok)
    assert resolve_sampler("tokrl-merged", model).name == "tokrl-merged"
    assert _tokens(model, tok, prompts, "tokrl-merged").completions == _tokens(model, tok, prompts, "hf").completions
    ours, unmerged = _tokens(model, tok, prompts, "tokrl-merged", seed=3), _tokens(model, tok, prompts, "tokrl", seed=3)
    assert ours.completions == unmerged.completions and len({tuple(c) for c in ours.completions}) > 2
    assert_sampled_tokens_match_a_forward(model, ours, temperature=0.8, top_p=0.9)


def _teacher_forced(model, prompt, completion) -> torch.Tensor:
    """log softmax(logits / 0.8) of each completion token in one forward of the unmerged model."""
    logits = teacher_forced_logits(model, prompt, completion)  # [n, V] in the model's dtype (fp64 for the ref)
    return (logits / 0.8).log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0]  # [n]


def test_log_probs_are_the_trained_policy_and_the_model_is_left_as_it_was():
    base, tok = build_family_model("llama")
    model = with_lora(base)
    prompts = prompts_with_replay(tok)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    out = _tokens(model, tok, prompts, "tokrl-merged", seed=4)
    model64 = copy.deepcopy(model).double()
    for row, (completion, sampled) in enumerate(zip(out.completions, out.logprobs, strict=True)):
        prompt = prompts[row // 3]
        want32, want64 = (_teacher_forced(m, prompt, completion) for m in (model, model64))
        assert_close_to_ref(torch.tensor(sampled), want32, want64, atol=1e-5, name=f"log-probs of row {row}")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing merged in place
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    layers = [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "active_adapters")]
    assert layers and not any(m.disable_adapters or m.merged for m in layers)  # adapters back on, unmerged


def test_an_optimiser_step_is_seen_by_the_next_call_and_graphs_replay_it():
    base, tok = build_family_model("llama")
    model = with_lora(base)
    prompts = prompts_with_replay(tok)
    sampler = SAMPLERS["tokrl-merged"](backend_for=lambda device: cuda_graph.CallReplay())
    options = SamplingOptions(do_sample=False)
    kwargs = {"num_generations": 2, "max_new_tokens": 8, "options": options, "eos_ids": [-1], "pad_id": 0}
    first = sampler.generate(model, prompts, **kwargs)[0]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param))  # an optimiser step, in place
    second = sampler.generate(model, prompts, **kwargs)[0]
    unmerged = SAMPLERS["tokrl"]().generate(model, prompts, **kwargs)[0]
    assert second == unmerged != first and sampler.graphed_share == 1.0


def _refused(model) -> str:
    reason = merge_reason(model)
    assert reason is not None
    with pytest.raises(ValueError, match="cannot run .*; use --sampler auto"):
        resolve_sampler("tokrl-merged", model)
    return reason


def test_refuses_what_merging_would_change():
    llama, tok = build_family_model("llama")
    assert "not a peft model" in _refused(llama)
    mixtral, _ = build_family_model("mixtral")
    assert "ParamWrapper" in _refused(with_lora(mixtral))  # LoRA on MoE expert parameters
    dora = get_peft_model(build_family_model("llama")[0], LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert "variant" in _refused(dora)
    saved = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    assert "ModulesToSaveWrapper" in _refused(get_peft_model(build_family_model("llama")[0], saved))


def test_copies_are_reused_while_the_layers_are():
    base, _ = build_family_model("llama")
    model = with_lora(base)
    body = model.get_base_model()
    first = merged_weights(body)
    addresses = {name: copy.data_ptr() for name, copy in first.copies.items()}
    again = merged_weights(body)
    assert again is first and {n: c.data_ptr() for n, c in again.copies.items()} == addresses
    assert len(first.copies) == sum("lora_A" in n for n, _ in model.named_parameters())  # one per adapted weight


def test_auto_samples_merged_only_where_the_copies_fit():
    model = with_lora(build_family_model("llama")[0])
    need = SAMPLERS["tokrl-merged"].copy_bytes(model)
    adapted = [m.base_layer.weight for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert need == sum(w.numel() * w.element_size() for w in adapted) > 0
    share = registry.MERGED_MAX_SHARE_OF_FREE
    assert registry.auto_choice(model, free_bytes=None) == "tokrl"  # free memory unknown: no copies
    assert registry.auto_choice(model, free_bytes=int(need / share) + 1) == "tokrl-merged"
    assert registry.auto_choice(model, free_bytes=int(need / share) - 1) == "tokrl"  # too little memory
    plain = build_family_model("llama")[0]  # no adapter: nothing to merge
    assert registry.auto_choice(plain, free_bytes=10**12) == "tokrl"
    assert resolve_sampler("auto", model).name == "tokrl-merged"  # this CPU has the memory for the tiny copies


def test_free_memory_is_read_on_a_cpu_and_unknown_without_meminfo(monkeypatch, tmp_path):
    from tokrl.infra import memory

    free = memory.free_memory_bytes(torch.device("cpu"))
    total = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:")) * 2**10
    assert free is not None and 0 < free <= total
    monkeypatch.setattr(memory, "_MEMINFO", tmp_path / "absent")
    assert memory.free_memory_bytes(torch.device("cpu")) is None
    model = with_lora(build_family_model("llama")[0])
    assert resolve_sampler("auto", model).name == "tokrl"  # unknown free memory: no copies


def test_a_merged_lora_on_a_tied_head_leaves_the_input_embedding_alone():
    # The tiny model ties its LM head to the input embedding. peft's LoRA on lm_head changes the head's output
    # only; the merged copy of the head's weight must not replace the embedding it is tied to (functional_call's
    # default tie_weights=True did, and the merged sampler's tokens left generate's).
    from tokrl.models.tiny import build_tiny_model

    base, tok = build_tiny_model(seed=0, initializer_range=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    model.eval()
    head = model.get_base_model().lm_head.base_layer.weight
    assert head is model.get_base_model().model.embed_tokens.weight and merge_reason(model) is None
    prompts = prompts_with_replay(tok)
    assert _tokens(model, tok, prompts, "tokrl-merged").completions == _tokens(model, tok, prompts, "hf").completions
