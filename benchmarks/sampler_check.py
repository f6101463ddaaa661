"""The sampler on a first GPU lease, in parts, each writing the JSON as soon as it is done.

    python benchmarks/sampler_check.py --out FILE.json [--max-seconds S] [--tiny]

The model: the Qwen2-1.5B architecture from its config with random weights (28 layers, D 1536, 12 query
heads over 2 KV heads, head dim 128, V 151,936; bf16, sdpa) with LoRA r=16 on q/k/v/o/gate/up/down, B drawn
non-zero, eval mode; 4 prompts x G=8 = 32 rows x 64 new tokens, T=1, top_p=0.95, 3 timed calls (median).
`--tiny` (and any machine without CUDA) runs a 2-layer model of the same family at D 64, V 1000 in fp32
(ops counted on its bf16 twin), 4 x 2 rows x 8 new tokens and one timed call on CPU, with the CPU stand-in for graphs
(replay = call the step): that is how the script is tested; its times say nothing about a GPU.

Parts, in order (each skipped once `--max-seconds` has run out; a part that raises records its error):
    setup      device, versions, model, build seconds
    ops        aten ops of one decode step (tokrl/sampler/profiling.py) per layer and per step, and with
               peft's fp32 adapters for comparison
    graphed    the tokrl sampler with graphs: first call (with captures) and timed calls: ms per step,
               tokens/s, sampler_graphed, graphs captured, KV arena MiB, peak memory
    eager      the same call decoded eagerly (no graphs): ms per step, tokens/s; graphed_speedup
    merged     the `tokrl-merged` sampler (LoRA merged into weight copies), graphed: ms per step, tokens/s,
               the copies' MiB, speedup over the unmerged graphed sampler
    kernels    torch.profiler over 3 replays of one captured step: kernels per step, the top kernels
               (CUDA; on CPU the aten ops of 3 stand-in replays)
    logp_gap   |logp_sampler - logp of a teacher-forced forward| over the graphed call's tokens
    hf         HF generate at a small size (rows x HF_TOKENS): ms per step, tokens/s, and tokrl's ratio
    short      max_new_tokens = 1 and 2 in a subprocess (a device-side assert poisons the CUDA context):
               completes, sampler_graphed, tokens equal to an eager decode
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:  # bench_utils, also when a test loads this file by path
    sys.path.insert(0, str(HERE))

from bench_utils import qwen2_1_5b_config  # noqa: E402

from tokrl.models.forward import transformers_model  # noqa: E402
from tokrl.models.lora import apply_lora  # noqa: E402
from tokrl.sampler import SAMPLERS, SamplingOptions, cuda_graph  # noqa: E402
from tokrl.sampler.adapters import adapter_copies  # noqa: E402
from tokrl.sampler.engine import decode_step, start_state  # noqa: E402
from tokrl.sampler.merged import merged_weights  # noqa: E402
from tokrl.sampler.profiling import count_ops, decoder_layers  # noqa: E402
from tokrl.sampler.state import arena_for  # noqa: E402

PROMPTS, GROUP, NEW_TOKENS, HF_TOKENS = 4, 8, 64, 16
ROUNDS = 3  # timed calls per measurement (the median is kept)
OPTIONS = SamplingOptions(do_sample=True, temperature=1.0, top_p=0.95)
EOS = 151643  # Qwen2's <|endoftext|>; random weights rarely pick it (the tiny model: its last id, set in main)


def qwen2_1_5b_lora(layers: int, device: torch.device, tiny: bool = False, dtype=torch.bfloat16) -> torch.nn.Module:
    """The Qwen2-1.5B architecture (or, tiny, the same family at D 64, V 1000) with `layers` layers and a
    LoRA r=16 on q/k/v/o/gate/up/down whose B is non-zero; eval mode."""
    from transformers import Qwen2ForCausalLM

    tiny_shape = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
    config = qwen2_1_5b_config(layers, **(tiny_shape if tiny else {}))
    torch.manual_seed(0)
    with torch.device(device):
        model = apply_lora(Qwen2ForCausalLM(config).to(dtype), r=16, alpha=32, dropout=0.05)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model.eval()


def decode_step_ops(model: torch.nn.Module, adapters: str = "copies") -> dict[str, object]:
    """Aten ops of one eager decode step of `model` (tokrl/sampler/profiling.py): per layer, outside the
    layers, syncs. adapters: "copies" (the tokrl sampler: LoRA in the model's dtype), "fp32" (peft's own
    fp32 adapters, what the sampler ran before) or "merged" (the tokrl-merged sampler)."""
    body = transformers_model(model)
    with model.disable_adapter() if adapters == "merged" else contextlib.nullcontext():
        overrides = {
            "copies": lambda: adapter_copies(body).copies,
            "fp32": dict,
            "merged": lambda: merged_weights(body).copies,
        }[adapters]()
        state = start_state(body, [[5, 6, 7, 8, 9], [10, 11, 12]], 2, 4, OPTIONS, [EOS], EOS, overrides=overrides)
        state.at_step(1)
        count = count_ops(lambda: decode_step(body, state, OPTIONS, overrides), decoder_layers(body))
    return {
        "ops_per_layer": count.ops_per_layer,
        "ops_outside_layers": count.outside_layers,
        "syncs": count.syncs,
        "counted_layers": len(count.per_layer),
        "top_ops": count.by_name.most_common(12),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(24, 33, (PROMPTS,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


class Check:
    """The JSON record, written after every part."""

    def __init__(self, out: Path, max_seconds: float) -> None:
        self.out, self.deadline, self.start = out, time.perf_counter() + max_seconds, time.perf_counter()
        self.record: dict[str, object] = {"parts": {}, "errors": {}, "skipped": []}

    def write(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        tmp.replace(self.out)

    def part(self, name: str, fn: Callable[[], dict[str, object]]) -> dict[str, object] | None:
        if time.perf_counter() >= self.deadline:
            self.record["skipped"].append(name)
            self.write()
            return None
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 (a part's failure is a result: record it, go on)
            self.record["errors"][name] = f"{type(err).__name__}: {err}"
            result = None
        else:
            self.record["parts"][name] = result
        self.write()
        return result


def _timed_calls(call: Callable[[], tuple], device: torch.device, rounds: int) -> tuple[float, tuple]:
    """Median seconds of `rounds` calls (seeded, synchronised) and the last call's output."""
    times, out = [], None
    for i in range(rounds):
        torch.manual_seed(i)
        _sync(device)
        start = time.perf_counter()
        out = call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def _tokrl_call(
    model, prompts, n, backend_for, options: SamplingOptions = OPTIONS, name: str = "tokrl"
) -> Callable[[], tuple]:
    def call() -> tuple:
        sampler = SAMPLERS[name](backend_for=backend_for)
        tokens, logps = sampler.generate(
            model, prompts, num_generations=GROUP, max_new_tokens=n, options=options, eos_ids=[EOS], pad_id=EOS
        )
        return tokens, logps, sampler

    return call


def _rate(seconds: float, tokens: list[list[int]]) -> dict[str, float]:
    steps = max(len(t) for t in tokens)
    return {
        "ms_per_step": round(1e3 * seconds / max(steps, 1), 3),
        "tokens_per_s": round(sum(len(t) for t in tokens) / seconds, 1),
        "seconds": round(seconds, 4),
    }


def graph_backend(device: torch.device) -> Callable[[torch.device], cuda_graph.GraphBackend]:
    """What the sampler uses for graphs here: CUDA graphs, or on CPU the stand-in (so the path runs)."""
    return cuda_graph.backend_for if device.type == "cuda" else (lambda _device: cuda_graph.CallReplay())


def kernels_of_replays(model, prompts, device, replays: int = 3) -> dict[str, object]:
    """Profile `replays` replays of the first captured step of a fresh call's state."""
    body = transformers_model(model)
    graphs = cuda_graph.graphs_for(body, graph_backend(device)(device))
    if not graphs.replays:
        raise RuntimeError("no captured step to replay (run the graphed part first)")
    adapters = adapter_copies(body)
    rows = cuda_graph.row_bucket(PROMPTS * GROUP)
    state = start_state(
        body, prompts, GROUP, NEW_TOKENS, OPTIONS, [EOS], EOS, rows=rows, arena=graphs.arena, overrides=adapters.copies
    )
    state.at_step(1)
    key = next(k for k in graphs.replays if k[-2:] == (rows, state.cache.window))
    replay = graphs.replays[key]
    if device.type != "cuda":
        count = count_ops(lambda: [replay() for _ in range(replays)])
        return {
            "kind": "aten ops (CPU stand-in)",
            "per_step": count.total / replays,
            "top": count.by_name.most_common(15),
        }
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(replays):
            replay()
        _sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name = Counter(e.name for e in kernels)
    time_by_name = Counter()
    for e in kernels:
        time_by_name[e.name] += e.device_time
    return {
        "kind": "CUDA kernels",
        "per_step": len(kernels) / replays,
        "us_per_step": round(sum(time_by_name.values()) / replays, 1),
        "top_by_count": [(n, c / replays) for n, c in by_name.most_common(15)],
        "top_by_time_us": [(n[:120], round(t / replays, 1)) for n, t in time_by_name.most_common(15)],
    }


def logp_gap(model, prompts, tokens, logps, device) -> dict[str, float]:
    """|sampler log-prob - teacher-forced log-prob| (the model's own forward, its dtype, fp32 adapters)."""
    gaps = []
    with torch.no_grad():
        for row, (completion, sampled) in enumerate(zip(tokens, logps, strict=True)):
            prompt = prompts[row // GROUP]
            ids = torch.tensor([prompt + completion[:-1]], device=device)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 :].float()  # [n, V]
            want = logits.log_softmax(-1).gather(1, torch.tensor(completion, device=device)[:, None])[:, 0]
            gaps.append((want - torch.tensor(sampled, device=device)).abs().cpu())
    gap = torch.cat(gaps).double()
    return {"mean": float(gap.mean()), "p95": float(gap.quantile(0.95)), "max": float(gap.max()), "tokens": gap.numel()}


def short_completions(model, prompts, device) -> dict[str, object]:
    """n = 1 and 2 through the graphed path: sampled (graphed share) and greedy against an eager decode."""
    results = {}
    for n in (1, 2):
        tokens, _, sampler = _tokrl_call(model, prompts, n, graph_backend(device))()
        greedy = SamplingOptions(do_sample=False)
        graphed = _tokrl_call(model, prompts, n, graph_backend(device), greedy)()[0]
        eager = _tokrl_call(model, prompts, n, lambda _device: None, greedy)()[0]
        _sync(device)
        results[f"n{n}"] = {
            "completed": True,
            "sampler_graphed": sampler.graphed_share,
            "lengths": sorted({len(t) for t in tokens}),
            "greedy_equals_eager": graphed == eager,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=480.0)
    parser.add_argument("--tiny", action="store_true", help="2-layer small model on CPU (how the script is tested)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 28; tiny 2)")
    parser.add_argument("--part", choices=["short"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    layers = args.layers or (2 if tiny else 28)
    check = Check(args.out, args.max_seconds)
    if tiny:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    model = qwen2_1_5b_lora(layers, device, tiny=tiny, dtype=torch.float32 if tiny else torch.bfloat16)
    vocab = transformers_model(model).config.vocab_size
    global EOS, GROUP, NEW_TOKENS, HF_TOKENS, ROUNDS
    EOS = min(EOS, vocab - 1)
    if tiny:  # sizes that keep the CPU run (the script's test) short
        GROUP, NEW_TOKENS, HF_TOKENS, ROUNDS = 2, 8, 4, 1
    prompts = _prompts(vocab)
    if args.part == "short":  # the subprocess of the `short` part
        check.part("short", lambda: short_completions(model, prompts, device))
        return 0
    check.part(
        "setup",
        lambda: {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "tiny": tiny,
            "layers": layers,
            "rows": PROMPTS * GROUP,
            "new_tokens": NEW_TOKENS,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
            "build_s": round(time.perf_counter() - start, 2),
        },
    )
    # ops are counted in bf16 (the GPU's dtype, where peft's fp32 adapters cost casts); tiny runs fp32 otherwise
    counted = model if not tiny else qwen2_1_5b_lora(layers, device, tiny=True, dtype=torch.bfloat16)
    check.part(
        "ops",
        lambda: {
            **decode_step_ops(counted),
            "fp32_adapters": decode_step_ops(counted, "fp32"),
            "merged": decode_step_ops(counted, "merged"),
        },
    )
    graphed: dict[str, object] = {}

    def run_graphed_part() -> dict[str, object]:
        call = _tokrl_call(model, prompts, NEW_TOKENS, graph_backend(device))
        begin = time.perf_counter()
        call()
        _sync(device)
        first = time.perf_counter() - begin
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, (tokens, logps, sampler) = _timed_calls(call, device, ROUNDS)
        graphed.update(tokens=tokens, logps=logps, seconds=seconds)
        graphs = cuda_graph.graphs_for(transformers_model(model), graph_backend(device)(device))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return {
            **_rate(seconds, tokens),
            "first_call_s": round(first, 3),
            "sampler_graphed": sampler.graphed_share,
            "graphs": len(graphs.replays),
            "kv_arena_mib": round(arena_for(transformers_model(model)).kv_bytes() / 2**20, 2),
            "peak_mem_mib": None if peak is None else round(peak, 1),
        }

    check.part("graphed", run_graphed_part)

    def run_eager_part() -> dict[str, object]:
        seconds, (tokens, _, _) = _timed_calls(_tokrl_call(model, prompts, NEW_TOKENS, lambda _d: None), device, ROUNDS)
        rate = _rate(seconds, tokens)
        if graphed:
            rate["graphed_speedup"] = round(seconds / graphed["seconds"], 2)
        return rate

    check.part("eager", run_eager_part)

    def run_merged_part() -> dict[str, object]:
        call = _tokrl_call(model, prompts, NEW_TOKENS, graph_backend(device), name="tokrl-merged")
        call()  # captures
        seconds, (tokens, _, sampler) = _timed_calls(call, device, ROUNDS)
        rate = {**_rate(seconds, tokens), "sampler_graphed": sampler.graphed_share}
        copies = merged_weights(transformers_model(model)).copies.values()
        rate["merged_copies_mib"] = round(sum(c.numel() * c.element_size() for c in copies) / 2**20, 1)
        if graphed:
            rate["speedup_over_unmerged"] = round(graphed["seconds"] / seconds, 2)
        return rate

    check.part("merged", run_merged_part)
    check.part("kernels", lambda: kernels_of_replays(model, prompts, device))
    if graphed:
        check.part("logp_gap", lambda: logp_gap(model, prompts, graphed["tokens"], graphed["logps"], device))

    def run_hf_part() -> dict[str, object]:
        def call() -> tuple:
            out = SAMPLERS["hf"]().generate(
                model,
                prompts,
                num_generations=GROUP,
                max_new_tokens=HF_TOKENS,
                options=OPTIONS,
                eos_ids=[EOS],
                pad_id=EOS,
            )
            return out[0], None, None

        seconds, (tokens, _, _) = _timed_calls(call, device, ROUNDS)
        rate = {**_rate(seconds, tokens), "new_tokens": HF_TOKENS}
        if graphed:
            ours = _rate(graphed["seconds"], graphed["tokens"])
            rate["tokrl_graphed_tokens_per_s_ratio"] = round(ours["tokens_per_s"] / rate["tokens_per_s"], 2)
        return rate

    check.part("hf", run_hf_part)
    check.part("short", lambda: _short_in_subprocess(args, check))
    return 0


def _short_in_subprocess(args: argparse.Namespace, check: Check) -> dict[str, object]:
    out = args.out.with_name(args.out.stem + "-short.json")
    command = [sys.executable, __file__, "--out", str(out), "--part", "short"]
    command += ["--tiny"] if args.tiny else []
    command += ["--layers", str(args.layers)] if args.layers else []
    budget = max(30.0, check.deadline - time.perf_counter())
    done = subprocess.run(command, capture_output=True, text=True, timeout=budget, check=False)
    child = json.loads(out.read_text()) if out.exists() else {}
    result = child.get("parts", {}).get("short") or {"error": child.get("errors", {}).get("short")}
    return {**result, "returncode": done.returncode, "stderr_tail": done.stderr[-2000:] if done.returncode else ""}


if __name__ == "__main__":
    raise SystemExit(main())
