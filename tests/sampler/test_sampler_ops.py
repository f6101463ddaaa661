"""Ops per decode step, counted on CPU with the profiler (a count bound, not a timing): a regression in what
a decode layer launches on the GPU shows up here. The model: a tiny bf16 Qwen2 (q/k/v biases, GQA) with a
peft LoRA on q/k/v/o/gate/up/down, whose adapters peft keeps in fp32 under the bf16 base, as on the GPU;
sampled unmerged (`tokrl`) and merged into weight copies (`tokrl-merged`)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokrl.config import PAPER_LORA_TARGETS
from tokrl.models.forward import transformers_model
from tokrl.models.lora import apply_lora
from tokrl.sampler.adapters import adapter_copies
from tokrl.sampler.engine import decode_step, start_state
from tokrl.sampler.merged import merged_weights
from tokrl.sampler.profiling import count_ops, decoder_layers
from tokrl.sampler.token_sampling import SamplingOptions

# The decoder layer's own ops (2 RMSNorms x 8, 7 projections, RoPE 10, cache writes 2, attention 1, SiLU and
# the gate product 2, residual adds 2): what transformers' Qwen2 code launches, with no K/V repeat.
BASE_OPS_PER_LAYER = 40
LORA_OPS_PER_LINEAR = 4  # x @ A^T, @ B^T, * scaling, + result: no casts with the adapters in the model's dtype
FP32_ADAPTER_OPS_PER_LINEAR = 6  # + the cast of x up and of the promoted result back
OPTIONS = SamplingOptions(do_sample=True, temperature=1.0, top_p=0.9)


def _model(lora: bool) -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    return (apply_lora(model, r=4, alpha=8, dropout=0.1, target_modules=PAPER_LORA_TARGETS) if lora else model).eval()


def _step_ops(model: torch.nn.Module, overrides: dict | None):
    body = transformers_model(model)
    state = start_state(body, [[5, 6, 7], [8]], 2, 4, OPTIONS, [1], 0, overrides=overrides)
    state.at_step(1)
    return count_ops(lambda: decode_step(body, state, OPTIONS, overrides), decoder_layers(body))


@pytest.fixture(scope="module")
def counts():
    lora = _model(lora=True)
    assert next(p for n, p in lora.named_parameters() if "lora_A" in n).dtype == torch.float32  # as peft makes them
    counts = {
        "base": _step_ops(_model(lora=False), None),
        "lora": _step_ops(lora, adapter_copies(transformers_model(lora)).copies),
        "lora_fp32": _step_ops(lora, {}),
    }
    with lora.disable_adapter():  # what the tokrl-merged sampler runs
        counts["merged"] = _step_ops(lora, merged_weights(transformers_model(lora)).copies)
    return counts


def test_a_decode_layer_launches_no_more_than_the_model_code(counts):
    base = counts["base"]
    assert base.per_layer == [base.per_layer[0]] * 2 and base.ops_per_layer <= BASE_OPS_PER_LAYER, base.by_name
    assert base.by_name["_scaled_dot_product_flash_attention_for_cpu"] == 2  # one attention op per layer
    assert base.syncs == 0  # nothing in a decode step waits for the device


def test_lora_adds_four_ops_per_adapted_linear_with_model_dtype_adapters(counts):
    base, lora, fp32 = counts["base"], counts["lora"], counts["lora_fp32"]
    linears = len(PAPER_LORA_TARGETS)
    assert lora.ops_per_layer - base.ops_per_layer == LORA_OPS_PER_LINEAR * linears, lora.by_name
    assert fp32.ops_per_layer - base.ops_per_layer == FP32_ADAPTER_OPS_PER_LINEAR * linears  # what the copies save
    assert lora.outside_layers == base.outside_layers and lora.syncs == 0


def test_merged_lora_launches_what_the_base_model_does(counts):
    base, merged = counts["base"], counts["merged"]
    assert merged.per_layer == base.per_layer and merged.total == base.total and merged.syncs == 0
