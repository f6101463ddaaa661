"""The CUDA-graph decode path (GPU only; skipped with a reason on CPU): equal to HF generate greedily,
reproducible under a seed, a handful of graphs per run, LoRA updates and adapter switches seen by replays."""

from __future__ import annotations

import pytest
import torch

from tests.sampler.helpers import prompts_with_replay, qwen2_lora, tiny_model
from tokrl.rollout import generate, sample_groups
from tokrl.sampler import cuda_graph
from tokrl.sampler.engine import model_body


def test_buckets_and_signature_cpu():
    """The bucket arithmetic and the capture key's adapter signature (no CUDA needed)."""
    assert [cuda_graph.row_bucket(b) for b in (1, 8, 9, 32, 33)] == [8, 8, 16, 32, 64]
    assert [cuda_graph.capacity_bucket(c) for c in (1, 128, 129, 288)] == [128, 128, 256, 384]
    model = qwen2_lora(tiny_model()[1])
    body = model_body(model)
    before = cuda_graph.module_signature(body)
    with model.disable_adapter():
        assert cuda_graph.module_signature(body) != before  # a replay must not run the captured adapter
    model.train()
    assert cuda_graph.module_signature(body) != before
    model.eval()
    assert cuda_graph.module_signature(body) == before


@pytest.fixture(scope="module")
def on_gpu():
    model, tok = tiny_model()
    lora = qwen2_lora(tok)
    return model.cuda(), lora.cuda(), tok


def _greedy(model, tok, prompts, sampler, n=12, g=1):
    return generate(model, tok, prompts, max_new_tokens=n, do_sample=False, num_generations=g, sampler=sampler)


@pytest.mark.gpu
@pytest.mark.parametrize("which", [0, 1], ids=["tiny", "qwen2-lora"])
def test_graphed_greedy_equals_hf_generate(on_gpu, which):
    model, tok = on_gpu[which], on_gpu[2]
    prompts = prompts_with_replay(tok)
    for g in (1, 3):
        assert (
            _greedy(model, tok, prompts, "tokrl", g=g).completions
            == _greedy(model, tok, prompts, "hf", g=g).completions
        )
    assert model_body(model) not in cuda_graph._EAGER_ONLY  # the graphs were captured: no eager fallback


@pytest.mark.gpu
def test_graphed_sampling_repeats_under_a_seed_and_buckets(on_gpu):
    _, model, tok = on_gpu
    prompts = prompts_with_replay(tok)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(
            sample_groups(model, tok, prompts, 4, max_new_tokens=20, temperature=0.9, top_p=0.95, sampler="tokrl")
        )
    assert runs[0].completions == runs[1].completions != runs[2].completions
    assert all(len(lp) == len(c) for lp, c in zip(runs[0].logprobs, runs[0].completions, strict=True))
    for cut in range(1, 4):  # other prompt lengths fall into the same row/column bucket
        sample_groups(model, tok, [p[cut:] for p in prompts], 4, max_new_tokens=20, temperature=0.9, top_p=0.95,
                      sampler="tokrl")  # fmt: skip
    assert len(cuda_graph._CAPTURED[model.get_base_model()]) <= 4


@pytest.mark.gpu
def test_replays_see_lora_updates_and_adapter_switches(on_gpu):
    _, model, tok = on_gpu
    prompts = prompts_with_replay(tok)
    _greedy(model, tok, prompts, "tokrl")  # captured with the current adapter weights
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)  # an optimiser step, in place
    assert _greedy(model, tok, prompts, "tokrl").completions == _greedy(model, tok, prompts, "hf").completions
    with model.disable_adapter():
        assert _greedy(model, tok, prompts, "tokrl").completions == _greedy(model, tok, prompts, "hf").completions
