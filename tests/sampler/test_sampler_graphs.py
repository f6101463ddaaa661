"""The graphed decode loop's bookkeeping on CPU: capture, warm-up and replay run through `CallReplay` (replay
= call the step again), so what `run_graphed` does around the graphs (buckets, windows, restoring the state
after warm-up and capture, falling back and counting when capture fails) is tested without CUDA."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.sampler.helpers import prompts_with_replay, qwen2_lora, tiny_model
from tokrl.models.forward import transformers_model
from tokrl.sampler import cuda_graph
from tokrl.sampler.engine import decode_step, decode_until_done, start_state
from tokrl.sampler.state import WINDOW_STEP, arena_for
from tokrl.sampler.token_sampling import SamplingOptions

OPTIONS = SamplingOptions(do_sample=True, temperature=1.3, top_p=0.9)
NO_EOS = [-1]  # rows never end: every call runs all n - 1 decode steps


class FailingCapture(cuda_graph.CallReplay):
    def capture(self, step):
        raise RuntimeError("injected capture failure")


@pytest.fixture(scope="module")
def lora():
    _, tok = tiny_model()
    return transformers_model(qwen2_lora(tok)), tok


def _eager(body, prompts, n, pad, rows):
    """The plain eager loop at the same row count (same random draws as the graphed loop, no captures)."""
    torch.manual_seed(5)
    state = start_state(body, prompts, 2, n, OPTIONS, NO_EOS, pad, rows=rows)
    decode_until_done(state, n, 1, lambda: decode_step(body, state, OPTIONS))
    return state.new_tokens.clone(), state.new_logps.clone()


def _graphed(body, prompts, n, pad, backend):
    torch.manual_seed(5)
    state, stats = cuda_graph.run_graphed(body, prompts, 2, n, OPTIONS, NO_EOS, pad, backend=backend)
    return state.new_tokens.clone(), state.new_logps.clone(), stats


# n = 1: no decode step; n = 2: one (the case whose warm-ups used to write past the buffers); n = 3: two;
# n = 70: the filled columns cross a window boundary (two windows, two captures).
@pytest.mark.parametrize("n", [1, 2, 3, 70])
def test_graphed_loop_equals_eager_and_warm_up_stays_on_the_current_step(lora, monkeypatch, n):
    body, tok = lora
    prompts = prompts_with_replay(tok)
    rows = cuda_graph.row_bucket(2 * len(prompts))
    seen: list[tuple[int, int]] = []  # (token column, cache column) of every step run, warm-ups included

    def recording_step(body_, state, options, overrides=None):
        seen.append((int(state.step), int(state.column)))
        return decode_step(body_, state, options, overrides)

    monkeypatch.setattr(cuda_graph, "decode_step", recording_step)
    arena_for(body).release()  # no graphs kept from other tests: every window is captured here
    tokens, logps, stats = _graphed(body, prompts, n, tok.pad_token_id, cuda_graph.CallReplay())
    want_tokens, want_logps = _eager(body, prompts, n, tok.pad_token_id, rows)
    assert torch.equal(tokens, want_tokens) and torch.equal(logps, want_logps)
    assert (stats.graphed, stats.eager, stats.failed_captures) == (n - 1, 0, 0)
    assert stats.graphed_share == (None if n == 1 else 1.0)
    width = max(len(p) for p in prompts)
    for token_column, cache_column in seen:
        assert token_column < n and cache_column == width + token_column - 1  # never past the step's own column
    windows = {-(-(width + t) // WINDOW_STEP) for t in range(n - 1)}  # windows of columns L .. L + n - 2
    assert len(seen) == (n - 1) + len(windows) * (cuda_graph.WARMUP_STEPS + 1)  # each window: warm-ups + capture


def test_a_failed_capture_decodes_eagerly_is_counted_and_warned_on_every_call(lora, caplog):
    body, tok = lora
    prompts, n = prompts_with_replay(tok), 70
    want_tokens, _ = _eager(body, prompts, n, tok.pad_token_id, cuda_graph.row_bucket(2 * len(prompts)))
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        for _ in range(2):
            tokens, _, stats = _graphed(body, prompts, n, tok.pad_token_id, FailingCapture())
            assert torch.equal(tokens, want_tokens)  # the samples do not depend on the fallback
            assert (stats.graphed, stats.eager, stats.failed_captures) == (0, n - 1, 2)  # two windows
            assert stats.graphed_share == 0.0
    warnings = [r.getMessage() for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(warnings) == 4 and all("injected capture failure" in w for w in warnings)


def test_graphs_are_reused_across_calls_and_bounded(lora, monkeypatch):
    body, tok = lora
    prompts, n = prompts_with_replay(tok), 70
    backend = cuda_graph.CallReplay()
    _graphed(body, prompts, n, tok.pad_token_id, backend)
    graphs = cuda_graph.graphs_for(body, backend)
    assert len(graphs.replays) == 2  # two windows
    captured = dict(graphs.replays)
    _graphed(body, [p[1:] for p in prompts], n, tok.pad_token_id, backend)  # shorter prompts, same buckets
    assert all(graphs.replays[key] is replay for key, replay in captured.items())  # replayed, not recaptured
    monkeypatch.setattr(cuda_graph, "MAX_GRAPHS", 1)
    arena_for(body).release()  # the arena's release drops the model's graphs
    assert not graphs.replays
    tokens, _, stats = _graphed(body, prompts, n, tok.pad_token_id, backend)
    assert len(graphs.replays) == 1 and stats.graphed == n - 1
    assert torch.equal(tokens, _eager(body, prompts, n, tok.pad_token_id, cuda_graph.row_bucket(12))[0])


def test_buckets_and_signature():
    """The row buckets and the capture key's adapter signature."""
    assert [cuda_graph.row_bucket(b) for b in (1, 8, 9, 32, 33)] == [8, 8, 16, 32, 64]
    model = qwen2_lora(tiny_model()[1])
    body = transformers_model(model)
    before = cuda_graph.module_signature(body)
    with model.disable_adapter():
        assert cuda_graph.module_signature(body) != before  # a replay must not run the captured adapter
    model.train()
    assert cuda_graph.module_signature(body) != before
    model.eval()
    assert cuda_graph.module_signature(body) == before
