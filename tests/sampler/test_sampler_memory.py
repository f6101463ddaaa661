"""The graphed sampler's memory: one decode cache per model (the arena), reused from call to call and grown (old
buffers released first, with the graphs that read them) only when a call needs more; the prefill holds the
distinct prompts only ([P, L], not a second [R, C] cache per call). The graphed path runs here with
`cuda_graph.CallReplay` (the captured step replayed as a plain call), as on CPU there are no graphs; the eager
decode keeps no arena (its caches are the distinct prefixes', tests/sampler/test_prefix_decode.py)."""

from __future__ import annotations

import gc
import weakref

import torch

from tests.sampler.helpers import prompts_with_replay, qwen2_lora, tiny_model
from tokrl.models.forward import transformers_model
from tokrl.sampler import SAMPLERS, SamplingOptions, cuda_graph
from tokrl.sampler import engine as engine_module
from tokrl.sampler.state import arena_for


def _sample(model, tok, prompts, g, n):
    return SAMPLERS["tokrl"]().generate(
        model,
        prompts,
        num_generations=g,
        max_new_tokens=n,
        options=SamplingOptions(do_sample=True),
        eos_ids=[-1],
        pad_id=tok.pad_token_id,
    )


def test_calls_reuse_one_arena_and_prefill_only_the_distinct_prompts(monkeypatch):
    monkeypatch.setattr(cuda_graph, "backend_for", lambda device: cuda_graph.CallReplay())
    _, tok = tiny_model()
    model = qwen2_lora(tok)
    body = transformers_model(model)
    prompts = prompts_with_replay(tok)
    prefills = []  # (rows, columns) of every prompt cache

    def recording_prefill(*args, **kwargs):
        cache, logits = real_prefill(*args, **kwargs)
        prefills.append(tuple(cache.layers[0].keys.shape[::2]))  # (P, L)
        return cache, logits

    real_prefill = engine_module.prefill
    monkeypatch.setattr(engine_module, "prefill", recording_prefill)
    _sample(model, tok, prompts, 4, 8)
    arena = arena_for(body)
    width = max(len(p) for p in prompts)
    assert prefills == [(len(prompts), width)]  # the 6 distinct prompts, not their 24 rows
    assert arena.allocations == 1 and arena.layout.rows == cuda_graph.row_bucket(4 * len(prompts))
    addresses = [t.data_ptr() for t in arena.keys + arena.values]
    _sample(model, tok, [p[:3] for p in prompts], 2, 8)  # fewer rows and columns: the same buffers
    _sample(model, tok, prompts, 4, 8)
    assert arena.allocations == 1 and [t.data_ptr() for t in arena.keys + arena.values] == addresses
    old = weakref.ref(arena.keys[0])
    _sample(model, tok, prompts, 4, 8 + arena.layout.columns)  # more columns than held: grow once
    gc.collect()
    assert arena.allocations == 2 and old() is None  # the old cache is gone, not kept beside the new one
    assert arena.layout.columns >= width + 8 + 64


def test_growing_the_arena_drops_the_graphs_that_read_it(monkeypatch):
    _, tok = tiny_model()
    model = qwen2_lora(tok)
    body = transformers_model(model)
    monkeypatch.setattr(cuda_graph, "backend_for", lambda device: cuda_graph.CallReplay())
    prompts = prompts_with_replay(tok)
    _sample(model, tok, prompts, 2, 8)
    graphs = cuda_graph.graphs_for(body, cuda_graph.CallReplay())
    before = dict(graphs.replays)
    assert before and arena_for(body).allocations == 1
    _sample(model, tok, prompts, 2, 200)  # needs more columns: the arena is reallocated
    assert arena_for(body).allocations == 2
    assert all(graphs.replays.get(key) is not replay for key, replay in before.items())  # none survived
    tokens, _ = _sample(model, tok, prompts, 2, 8)
    assert len(tokens) == 2 * len(prompts) and all(len(t) == 8 for t in tokens)


def test_each_model_keeps_its_own_arena(monkeypatch):
    monkeypatch.setattr(cuda_graph, "backend_for", lambda device: cuda_graph.CallReplay())
    _, tok = tiny_model()
    a, b = qwen2_lora(tok), qwen2_lora(tok)
    _sample(a, tok, prompts_with_replay(tok), 2, 4)
    _sample(b, tok, prompts_with_replay(tok), 2, 4)
    assert arena_for(transformers_model(a)) is not arena_for(transformers_model(b))
    assert torch.is_tensor(arena_for(transformers_model(a)).keys[0])
