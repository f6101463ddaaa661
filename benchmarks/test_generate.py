"""Rollout sampling: HF `generate` against the tokrl sampler, same model, prompts, settings and seed.

The model: on CUDA, the Qwen2-1.5B architecture from its config with random weights (bf16, sdpa), LoRA
r=16 on q/k/v/o/gate/up/down with a non-zero B (run unmerged, eval mode), 4 prompts x G=8 = 32 rows x 200
new tokens, as in the paper preset. On CPU, tokrl's tiny Qwen2 (fp32) with the same LoRA, 4 x 8 rows x 16
new tokens. Prompts: random token ids, 24 to 32 tokens (left padding exercised). Sampling at T=1, top_p=1.

One timed round = one sampler call for the whole batch (seeded, then synchronised). `extra_info` holds
provider ("hf" | "tokrl"), device, tokens_per_s (generated tokens / median), ms_per_step (median / decode
steps run), batch, new_tokens, peak_mem_mib (above the model), and first_call_s: the first call's time,
which for tokrl on CUDA includes capturing its CUDA graphs (capture_s = first_call_s - median).
Gate: on CPU, both samplers must produce the same greedy tokens; on CUDA (bf16, different attention
kernels) the fraction of rows whose greedy completions agree is recorded as greedy_agreement.

Providers: hf, tokrl, and tokrl-merged (the tokrl engine with LoRA merged into copies of the base weights).
Launches per decode step (tokrl providers, whatever the device): the aten ops of one decode step of the
Qwen2-1.5B architecture in bf16 with LoRA r=16 on q/k/v/o/gate/up/down, counted with torch.profiler on 2
layers (tokrl/sampler/profiling.py; `sampler_check.decode_step_ops`): `ops_per_layer`, `ops_outside_layers`,
`ops_per_step` = outside + 28 x per layer, and for tokrl `ops_per_layer_fp32_adapters` with peft's fp32
adapters (what the sampler ran before it held adapter copies in the model's dtype).
"""

from __future__ import annotations

import time

import pytest
import torch
from bench_utils import DEVICE, ON_CUDA, build_bench_model, device_name, peak_mib, sync
from sampler_check import decode_step_ops, qwen2_1_5b_lora

from tokrl.models.lora import apply_lora
from tokrl.sampler import SAMPLERS, SamplingOptions

PROMPTS, GROUP = 4, 8
FULL_LAYERS, COUNTED_LAYERS = 28, 2  # Qwen2-1.5B's decoder layers; the layers the op count runs
NEW_TOKENS = 200 if ON_CUDA else 16
LORA_R = 16
SECONDS_PER_BENCH = 20.0 if ON_CUDA else 3.0  # rounds are sized to about this much time per provider


def config_eos(model: torch.nn.Module) -> int:
    return int(model.get_base_model().config.eos_token_id or 0)


def _build_model() -> tuple[torch.nn.Module, str]:
    model, name = build_bench_model()
    model = apply_lora(model, r=LORA_R, alpha=32, dropout=0.05)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.02)  # a trained-looking adapter: its matmuls must run
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = config_eos(model)
    return model.eval(), name


@pytest.fixture(scope="module")
def setup():
    model, name = _build_model()
    vocab = model.get_base_model().config.vocab_size
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(24, 33, (PROMPTS,), generator=gen).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    return model, name, prompts


def _call(model, prompts, provider: str, options: SamplingOptions, seed: int = 0):
    torch.manual_seed(seed)
    eos = config_eos(model)
    out = SAMPLERS[provider]().generate(
        model, prompts, num_generations=GROUP, max_new_tokens=NEW_TOKENS, options=options, eos_ids=[eos], pad_id=eos
    )
    sync()
    return out


@pytest.fixture(scope="module")
def hf_greedy(setup) -> list[list[int]]:
    """HF generate's greedy completions, computed once (at HF's speed a call is the slow part on CUDA)."""
    model, _, prompts = setup
    return _call(model, prompts, "hf", SamplingOptions(do_sample=False))[0]


def _greedy_agreement(model, prompts, provider: str, theirs: list[list[int]]) -> float:
    ours, _ = _call(model, prompts, provider, SamplingOptions(do_sample=False))
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


@pytest.fixture(scope="module")
def decode_ops() -> dict[str, object]:
    """Ops of one decode step of the Qwen2-1.5B architecture with LoRA (module docstring)."""
    model = qwen2_1_5b_lora(COUNTED_LAYERS, DEVICE)
    counts = {mode: decode_step_ops(model, mode) for mode in ("copies", "fp32", "merged")}
    assert all(c["syncs"] == 0 for c in counts.values()), "a decode step synchronises with the host"
    per_step = {mode: c["ops_outside_layers"] + FULL_LAYERS * c["ops_per_layer"] for mode, c in counts.items()}
    return {
        "tokrl": {
            "ops_per_layer": counts["copies"]["ops_per_layer"],
            "ops_per_step": per_step["copies"],
            "ops_outside_layers": counts["copies"]["ops_outside_layers"],
            "ops_counted_layers": COUNTED_LAYERS,
            "ops_per_layer_fp32_adapters": counts["fp32"]["ops_per_layer"],
            "ops_per_step_fp32_adapters": per_step["fp32"],
        },
        "tokrl-merged": {
            "ops_per_layer": counts["merged"]["ops_per_layer"],
            "ops_per_step": per_step["merged"],
            "ops_counted_layers": COUNTED_LAYERS,
        },
    }


@pytest.mark.parametrize("provider", ["hf", "tokrl", "tokrl-merged"])
def test_generate(benchmark, setup, decode_ops, hf_greedy, provider: str) -> None:
    model, name, prompts = setup
    options = SamplingOptions(do_sample=True, temperature=1.0, top_p=1.0)
    agreement = _greedy_agreement(model, prompts, "tokrl" if provider == "hf" else provider, hf_greedy)
    if not ON_CUDA:
        assert agreement == 1.0, "tokrl and hf greedy completions differ on CPU (fp32): the sampler is wrong"
    start = time.perf_counter()
    tokens, _ = _call(model, prompts, provider, options)  # first call: for tokrl on CUDA, the graph capture
    first_call_s = time.perf_counter() - start
    peak, seconds = peak_mib(lambda: _call(model, prompts, provider, options))
    n_rounds = max(2 if ON_CUDA else 3, min(15, int(SECONDS_PER_BENCH / max(seconds, 1e-3))))
    benchmark.group = f"generate {name} {PROMPTS}x{GROUP} rows x {NEW_TOKENS} new tokens LoRA r={LORA_R}"
    benchmark.pedantic(lambda: _call(model, prompts, provider, options), iterations=1, rounds=n_rounds)
    median = benchmark.stats.stats.median
    generated = sum(len(t) for t in tokens)
    steps = max(len(t) for t in tokens)
    benchmark.extra_info.update(
        {
            "provider": provider,
            "device": device_name(),
            "tokens_per_s": round(generated / median, 1),
            "ms_per_step": round(1e3 * median / max(steps, 1), 3),
            "batch": PROMPTS * GROUP,
            "new_tokens": NEW_TOKENS,
            "generated_tokens": generated,
            "peak_mem_mib": None if peak is None else round(peak, 2),
            "first_call_s": round(first_call_s, 3),
            "greedy_agreement": agreement,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "torch_version": torch.__version__,
            **decode_ops.get(provider, {}),
        }
    )
