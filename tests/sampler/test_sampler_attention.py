"""The engine's attention function against transformers' own eager attention (the reference: repeat_kv,
explicit softmax): grouped queries folded over shared K/V, any additive mask, Gemma-2's soft-cap; a decode
step's attention is one op (no K/V copy); what it does not implement is refused, not ignored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.llama.modeling_llama import eager_attention_forward as llama_eager

from tests.utils import assert_close_to_ref
from tokrl.sampler.attention import sampler_attention
from tokrl.sampler.profiling import count_ops


def _inputs(rows, heads, kv_heads, q, width, dim, dtype=torch.float32):
    query = torch.randn(rows, heads, q, dim, dtype=dtype)  # [R, H, q, D]
    key, value = (torch.randn(rows, kv_heads, width, dim, dtype=dtype) for _ in range(2))  # [R, H_kv, W, D]
    hidden = torch.rand(rows, 1, q, width) < 0.3  # [R, 1, q, W]
    hidden[..., -1] = False  # every query sees at least one column
    bias = torch.zeros(rows, 1, q, width, dtype=dtype).masked_fill(hidden, torch.finfo(dtype).min)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    return module, query, key, value, bias


@pytest.mark.parametrize(
    ("heads", "kv_heads", "q"),
    [(6, 1, 1), (6, 2, 1), (4, 4, 1), (6, 2, 5)],  # decode (q = 1) at GQA 6:1, 3:1, MHA; a prefill (q = 5)
)
def test_equals_transformers_eager_attention(heads, kv_heads, q):
    module, query, key, value, bias = _inputs(3, heads, kv_heads, q, 9, 16)
    got, _ = sampler_attention(module, query, key, value, bias, scaling=0.25)  # [R, q, H, D]
    want, _ = llama_eager(module, query, key, value, bias, scaling=0.25)
    ref, _ = llama_eager(module, *(t.double() for t in (query, key, value, bias)), scaling=0.25)
    assert_close_to_ref(got, want, ref, atol=1e-6, name="attention output")


def test_softcap_equals_gemma2_eager_attention():
    module, query, key, value, bias = _inputs(2, 4, 2, 3, 7, 8)
    query = query * 8  # scores large enough that the cap bends them
    got, _ = sampler_attention(module, query, key, value, bias, scaling=0.35, softcap=5.0)
    want, _ = gemma2_eager(module, query, key, value, bias, scaling=0.35, softcap=5.0)
    ref, _ = gemma2_eager(module, *(t.double() for t in (query, key, value, bias)), scaling=0.35, softcap=5.0)
    assert_close_to_ref(got, want, ref, atol=1e-6, name="soft-capped attention output")
    uncapped, _ = sampler_attention(module, query, key, value, bias, scaling=0.35)
    assert (uncapped - got).abs().max() > 1e-2  # the cap matters here


def test_a_decode_step_attends_in_one_op_without_copying_kv():
    module, query, key, value, bias = _inputs(4, 12, 2, 1, 128, 16)  # GQA 6:1, as Qwen2-1.5B
    count = count_ops(lambda: sampler_attention(module, query, key, value, bias, scaling=0.25))
    assert count.total == 1, count.by_name  # no repeat_kv (2 copies of K/V), no query copy


def test_refuses_what_it_does_not_implement():
    module, query, key, value, bias = _inputs(1, 2, 1, 1, 4, 8)
    with pytest.raises(NotImplementedError, match="does not implement s_aux"):
        sampler_attention(module, query, key, value, bias, s_aux=torch.zeros(2))
    out, _ = sampler_attention(module, query, key, value, bias, position_ids=torch.zeros(1), output_attentions=False)
    assert out.shape == (1, 1, 2, 8)  # bookkeeping arguments are fine
