"""The Triton kernels at one shape on CUDA: phase and per-kernel times, autotune choices, registers, errors.

    python benchmarks/kernel_check.py --out FILE.json [--k 4096] [--dim 1536] [--vocab 151936]
        [--dtypes bf16/bf16,fp32/bf16] [--heads frozen,trained] [--reps 10] [--tiny]

Per (hidden/head dtypes, head mode): N = k distinct rows (a permutation), advantages of both signs, old log-probs
offset so the clip is active on both sides. One warm-up call of tokrl (the autotuning; its wall time is recorded),
then per timed function `reps` calls, each between two CUDA events and followed by a synchronize, and the median:
- fwd: tokrl's forward (autograd graph kept);
- fwd_bwd: tokrl's forward + loss.backward();
- naive_fwd_bwd: forward + loss.backward() of `bench_utils.naive_pg_loss`, the `naive` provider of
  test_linear_pg_loss.py (hidden @ W.T -> [N, V] logits in the inputs' dtype, fp32 log_softmax, gather, clipped PG
  epilogue, no KL; hidden and head upcast to fp32 first when their dtypes differ); no warm-up call of its own (its
  first call, with the allocator's growth, is one of the `reps`: the median absorbs it). The target is tokrl <= 0.85x
  naive with a frozen head.
Every timed call makes fresh leaves (hidden requires grad; the head only when "trained"), so dH (and dW) are
allocated inside it, as in the pytest suite; nothing else (inputs, memory statistics) is. One profiled forward +
backward gives the CUDA time per kernel, grouped (lse_split, merge, dz_chunk, gemm, index_add, other). Also: the
autotuner's choice per kernel and key, registers / spills / shared memory of every compiled Triton kernel, peak
memory, and the largest |error| of loss, logp, dH (and dW) against the PyTorch twin (fp32 logits), beside naive's
own error for scale.

`--tiny` runs D 64, V 1000, k 32 on CPU through the Triton interpreter: how this script is tested (times mean
nothing there, and there are no compiled kernels). The JSON is rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GROUPS = ("lse_split", "merge", "dz_chunk", "backward_kernel", "gemm", "index_add", "pg_")


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtypes", default="bf16/bf16", help="comma-separated hidden/head dtype pairs")
    parser.add_argument("--heads", default="frozen,trained")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="D 64, V 1000, k 32 on CPU (interpreter)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.k, args.dim, args.vocab, args.reps = 32, 64, 1000, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import torch

    if not torch.cuda.is_available():
        if not args.tiny:
            print("kernel_check: no CUDA device (use --tiny to test the script on CPU)", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported below
    sys.path.insert(0, str(ROOT))
    report = {"k": args.k, "dim": args.dim, "vocab": args.vocab, "cases": [], "versions": _versions()}
    for dtypes in args.dtypes.split(","):
        for head in args.heads.split(","):
            started = time.perf_counter()
            try:
                case = run_case(args, dtypes, head == "trained")
            except Exception as exc:  # one failing case must not lose the others
                case = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            case.update(dtypes=dtypes, head=head, seconds=round(time.perf_counter() - started, 1))
            report["cases"].append(case)
            report["compiled"] = compiled_kernels()
            report["autotune"] = autotune_choices()
            _write(args.out, report)
    return 0 if all("error" not in c for c in report["cases"]) else 1


def _versions() -> dict:
    import torch
    import triton

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (Triton interpreter)"
    return {"device": device, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def _inputs(args, dtypes: str, device):
    import torch

    from tokrl_kernels.reference import linear_pg_loss as twin

    names = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    h_dtype, w_dtype = (names[d] for d in dtypes.split("/"))
    gen = torch.Generator(device=device).manual_seed(0)
    k, dim, vocab = args.k, args.dim, args.vocab
    hidden = torch.randn(k, dim, generator=gen, device=device).to(h_dtype)  # [N = k, D]
    weight = (torch.randn(vocab, dim, generator=gen, device=device) * (2 / math.sqrt(dim))).to(w_dtype)  # [V, D]
    index = torch.randperm(k, generator=gen, device=device)  # [k]
    targets = torch.randint(0, vocab, (k,), generator=gen, device=device)  # [k]
    advantages = torch.randn(k, generator=gen, device=device)  # [k] both signs
    with torch.no_grad():
        logp = twin(hidden, weight, targets, advantages, index).logp  # [k]
    offsets = (torch.rand(k, generator=gen, device=device) - 0.5) * 1.2  # [k] ratios on both sides of both bounds
    return dict(
        hidden=hidden, weight=weight, targets=targets, advantages=advantages, index=index, old_logp=logp + offsets
    )


def _timer(device):
    """ms of one call of fn (CUDA events on CUDA, perf_counter elsewhere)."""
    import torch

    def time_ms(fn) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return time_ms


def run_case(args, dtypes: str, trained: bool) -> dict:
    import torch

    from tokrl_kernels import linear_pg_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = _inputs(args, dtypes, device)
    time_ms = _timer(device)

    def call(fn, backward: bool, **kw):
        hidden = x["hidden"].detach().requires_grad_(True)
        weight = x["weight"].detach().requires_grad_(trained)
        out = fn(hidden, weight, x["targets"], x["advantages"], x["index"], old_logp=x["old_logp"], **kw)
        if backward:
            out[0].backward()
        return out[0].detach(), out[1].detach(), hidden.grad, weight.grad

    tokrl = lambda backward=True: call(linear_pg_loss, backward, impl="triton")  # noqa: E731
    wall = time.perf_counter()
    fast = tokrl()  # autotuning happens here
    if device.type == "cuda":
        torch.cuda.synchronize()
    case: dict = {"first_call_s": round(time.perf_counter() - wall, 2)}
    for name, fn in (
        ("fwd", lambda: tokrl(False)),
        ("fwd_bwd", tokrl),
        ("naive_fwd_bwd", lambda: call(naive_upcast, True)),
    ):
        times = [time_ms(fn) for _ in range(args.reps)]
        case[f"{name}_ms"] = round(statistics.median(times), 4)
    case["fwd_bwd_vs_naive"] = round(case["fwd_bwd_ms"] / case["naive_fwd_bwd_ms"], 4)
    case["kernels_ms"] = profile_kernels(tokrl, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        tokrl()
        case["peak_mib_above_inputs"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    case["errors"] = errors(fast, call(linear_pg_loss, True, impl="torch"), call(naive_upcast, True))
    return case


def naive_upcast(hidden, weight, *args, **kwargs):
    """Full [N, V] logits: `bench_utils.naive_pg_loss`, the pytest suite's `naive`, (loss, logp); hidden and head of
    different dtypes are both upcast first, as the kernels' dtype contract says.

    Not tests.utils.naive_pg_loss: that one applies logit_scale and temperature even at 1.0, two identity fp32 [N, V]
    ops forward and two backward, which made this script's naive ~4.9 ms (37%) slower than the suite's at N 4096 on
    the H200 (18.1 vs 13.2 ms, results/h200-2026-11-30-*-4096.json)."""
    if str(HERE) not in sys.path:  # the script's own folder: bench_utils (absent when loaded by a test)
        sys.path.insert(0, str(HERE))
    from bench_utils import naive_pg_loss

    if hidden.dtype != weight.dtype:
        hidden, weight = hidden.float(), weight.float()
    return naive_pg_loss(hidden, weight, *args, **kwargs)


def errors(fast, twin, naive) -> dict:
    """max |fast - twin| and max |naive - twin| per output: the style rule's two terms, the twin as reference."""
    out = {}
    for i, name in enumerate(("loss", "logp", "dH", "dW")):
        if twin[i] is None or fast[i] is None:
            continue
        ref = twin[i].double()
        out[name] = {
            "tokrl": float((fast[i].double() - ref).abs().max()),
            "naive": float((naive[i].double() - ref).abs().max()),
        }
    return out


def profile_kernels(fn, device) -> dict:
    """Device time (ms) per kernel group of one call, from torch.profiler (CPU time under the interpreter)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        if device.type == "cuda":
            # Kernels only: an aten op's device time is its kernels' time again.
            if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        else:
            us = event.self_cpu_time_total
        if not us:
            continue
        name = event.key.lower()
        group = next((g for g in GROUPS if g in name), None)
        if group is None and "indexfunc" in name:
            group = "index_add"  # CUDA's index_add_ kernel
        elif group is None and any(tag in name for tag in ("gemm", "nvjet", "cutlass", "xmma", "addmm", "mm")):
            group = "gemm"
        groups[group or "other"] = groups.get(group or "other", 0.0) + us / 1e3
    return {name: round(ms, 4) for name, ms in sorted(groups.items())}


def compiled_kernels() -> list[dict]:
    """Registers, spills and shared memory of every Triton kernel compiled in this process (CUDA only)."""
    from triton.runtime.autotuner import Autotuner

    from tokrl_kernels import _aot

    found = []
    for name in _aot.KERNELS:
        kernel = _aot.kernel_object(name)
        jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
        for entry in getattr(jit, "device_caches", {}).values():
            cache = entry[0] if isinstance(entry, tuple) else entry
            for compiled in getattr(cache, "values", dict)():
                meta = getattr(compiled, "metadata", None)
                found.append(
                    {
                        "kernel": name,
                        "registers": getattr(compiled, "n_regs", None),
                        "spills": getattr(compiled, "n_spills", None),
                        "shared": getattr(meta, "shared", None),
                        "num_warps": getattr(meta, "num_warps", None),
                        "num_stages": getattr(meta, "num_stages", None),
                    }
                )
    return found


def autotune_choices() -> list[dict]:
    """The config each autotuned kernel chose, per key."""
    from tokrl_kernels import _aot

    choices = []
    for name in ("lse_split", "dz_chunk", "backward_atomic"):
        for key, config in getattr(_aot.kernel_object(name), "cache", {}).items():
            choices.append({"kernel": name, "key": [str(v) for v in key], "config": str(config)})
    return choices


if __name__ == "__main__":
    sys.exit(main())
