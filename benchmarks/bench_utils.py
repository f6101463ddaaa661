"""What every benchmark file shares: the device, timing, peak memory, the correctness gate, `extra_info` and the
`naive` baseline (`naive_pg_loss`) that test_linear_pg_loss.py and kernel_check.py both time.

Timing: `pytest-benchmark`'s `pedantic` with one call per round; on CUDA the timed function ends with
`torch.cuda.synchronize()`, so a round is the GPU time of the call, and pytest-benchmark takes the median.

Peak memory ("MiB above the inputs"), measured in a separate, untimed call:
- CUDA: `reset_peak_memory_stats`, then `max_memory_allocated()` minus what was allocated before the call.
- CPU: torch has no allocator peak counter, so the call runs once under `torch.profiler` with
  `profile_memory=True`; every allocation and free the CPU allocator makes during the call is an event
  with a signed byte count, and the peak is the running maximum of their sum in time order. Tensors that
  existed before the call (the inputs) are not events, so this is the peak above the inputs, the same
  quantity as on CUDA. It counts torch tensors only (not Python objects or the MKL/oneDNN scratch space).
  It reads the profiler's raw event list; if a torch release moves it, the figure is None, never a guess.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

import torch

try:
    import triton

    TRITON_VERSION: str | None = triton.__version__
except ImportError:  # the CPU suite needs no triton
    TRITON_VERSION = None

MIB = 2**20
ON_CUDA = torch.cuda.is_available() and os.environ.get("TOKRL_BENCH_DEVICE", "").lower() != "cpu"
DEVICE = torch.device("cuda") if ON_CUDA else torch.device("cpu")


def qwen2_1_5b_config(layers: int = 28, **fields: object):  # -> transformers.Qwen2Config
    """The Qwen2-1.5B architecture (GQA 6:1, head dim 128, V 151,936, tied head, sdpa) with `layers` decoder
    layers; `fields` override or add Qwen2Config fields (a smaller shape of the same family, for CPU)."""
    from transformers import Qwen2Config

    shape = {
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "attn_implementation": "sdpa",
    }
    return Qwen2Config(**{**shape, "num_hidden_layers": layers, **fields})


def build_bench_model(**cuda_config: object) -> tuple[torch.nn.Module, str]:
    """(model, description) for the e2e benchmarks: on CUDA the Qwen2-1.5B architecture from its config with
    random weights (bf16, sdpa attention, no download; `cuda_config` adds Qwen2Config fields); on CPU tokrl's
    tiny Qwen2 (fp32). No LoRA yet."""
    if ON_CUDA:
        from transformers import Qwen2ForCausalLM

        config = qwen2_1_5b_config(28, max_position_embeddings=131072, **cuda_config)
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        return model, "qwen2-1.5b-arch (random weights, bf16)"
    from tokrl.models.tiny import build_tiny_model

    model, _tokenizer = build_tiny_model(seed=0)
    return model, "tokrl tiny qwen2 (fp32)"


def device_name() -> str:
    """Name such as "NVIDIA H100 80GB HBM3" on CUDA, "cpu" otherwise (the report keys its CPU label on it)."""
    return torch.cuda.get_device_name(DEVICE) if ON_CUDA else "cpu"


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def rounds(seconds_per_call: float) -> dict[str, int]:
    """pedantic() repeat counts: about 1 s of rounds per benchmark, at least 10 on CUDA and 3 on the CPU.

    Each benchmark has already run the call twice before timing (correctness gate, memory), so on CPU
    that is the warm-up; on CUDA a few more rounds let the clocks and the caching allocator settle.
    """
    lo, hi, warmup = (10, 100, 3) if ON_CUDA else (3, 15, 0)
    n = int(1.0 / seconds_per_call) if seconds_per_call > 0 else hi
    return {"rounds": min(hi, max(lo, n)), "warmup_rounds": warmup}


def peak_mib(fn: Callable[[], object]) -> tuple[float | None, float]:
    """(peak MiB allocated by one call of `fn` above what was allocated before it, the call's seconds).

    The seconds only size the timed rounds (on CPU they include the profiler's overhead); see module doc.
    """
    gc.collect()
    if ON_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak / MIB, seconds
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        out = fn()
        del out  # frees inside the window count too: the peak is what matters, not the balance
        seconds = time.perf_counter() - start
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:
        return None, seconds
    events = sorted((e for e in results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()  # + allocation, - free
        peak = max(peak, running)
    return peak / MIB, seconds


def extra_info(
    *,
    provider: str,
    mode: str,
    n_rows: int,
    n_selected: int,
    hidden: int,
    vocab: int,
    dtype: torch.dtype,
    peak_mem_mib: float | None,
    tflops: float | None,
) -> dict[str, object]:
    """The `benchmark.extra_info` record every benchmark writes (report.py reads exactly these keys)."""
    return {
        "provider": provider,
        "device": device_name(),
        "mode": mode,
        "n_rows": n_rows,
        "n_selected": n_selected,
        "hidden": hidden,
        "vocab": vocab,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_mem_mib": None if peak_mem_mib is None else round(peak_mem_mib, 2),
        "tflops": tflops,
        "torch_version": torch.__version__,
        "triton_version": TRITON_VERSION,
    }


def naive_pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    index: torch.Tensor,
    *,
    old_logp: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `naive` baseline of both kernel scripts (test_linear_pg_loss.py, kernel_check.py): (loss, logp [k]).

    hidden @ W.T -> [N, V] logits in the inputs' dtype, `.float()`, log_softmax over all of them in fp32, the k
    (row, target) entries picked by advanced indexing, then tokrl's PG epilogue (clip, no KL) summed. Nothing else
    touches the [N, V] tensors: no temperature or logit-scale op at 1.0 (each identity op on the fp32 logits is one
    more read and write of them forward and again backward, ~1.2 ms apiece at N 4096 and V 151936 on an H200).
    Full-size tensors: forward [N, V] bf16 logits, fp32 copy, fp32 log-probs; backward a zero-filled [N, V] fp32
    gradient with k entries put in, the log_softmax backward, its cast back to the logits' dtype.
    """
    from tokrl_kernels.reference import pg_epilogue

    logits = hidden @ weight.T  # [N, V] in the inputs' dtype
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V] fp32
    logp = logprobs[index, targets]  # [k]
    loss_rows, _clipped = pg_epilogue(
        logp, advantages, old_logp, None, weights, eps_low=eps_low, eps_high=eps_high, beta=0.0
    )  # [k] fp32
    return loss_rows.sum(), logp


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (0 when both are 0)."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.norm().item()
    diff = (got - want).norm().item()
    return diff / scale if scale > 0 else diff


def check_close(name: str, got: torch.Tensor | None, want: torch.Tensor, tol: float) -> None:
    """Fail the benchmark when a provider disagrees with the chunked reference (relative L2 error)."""
    assert got is not None, f"{name}: the provider produced no value"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = rel_err(got, want)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} against the chunked reference"
