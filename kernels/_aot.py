"""Ahead-of-time compile of every Triton kernel and autotune config for a CUDA target, on a machine without a GPU.

How: the real launchers (`lse_forward`, both backwards, the PG epilogue) run on meta tensors at the requested
shape with every kernel's launch intercepted (arguments recorded, nothing runs); then every config the autotuner
may pick for those arguments (its own prune) is compiled the way Triton's JIT would (same binder, so the same
specialisations) for GPUTarget("cuda", arch, 32) with the ptxas that ships in the triton wheel. Resources come from
the cubin (`cuobjdump --dump-resource-usage`: registers, and the stack = local memory, where spills go) and the
kernel metadata (shared memory per block).

    python -m tokrl_kernels._aot --arch 90 --arch 80 --json out.json      # TRITON_INTERPRET must be unset

Compiling needs the kernels as real JIT functions with the GPU config lists, so TRITON_INTERPRET must be unset
when triton and the kernels are imported (tests run this in a subprocess); capturing launches works either way.
Private Triton APIs used: the JIT binder and `_pack_args`, as `JITFunction.run` uses them (triton 3.9).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton.runtime.autotuner import Autotuner

from tokrl_kernels import _backward_atomic, _backward_gemm, _lse_forward, pg_loss
from tokrl_kernels._configs import ATOMIC, DZ, FORWARD, INTERPRET
from tokrl_kernels._logits import LogitMap

# Shared memory one block may use (opt-in maximum): H100/H200 (sm_90) 227 KiB, A100 (sm_80) 163 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
KERNELS = {
    "lse_split": (_lse_forward, "_lse_split_kernel"),
    "merge": (_lse_forward, "_merge_kernel"),
    "dz_chunk": (_backward_gemm, "_dz_chunk_kernel"),
    "backward_atomic": (_backward_atomic, "_backward_kernel"),
    "pg_forward": (pg_loss, "_pg_forward_kernel"),
    "pg_backward": (pg_loss, "_pg_backward_kernel"),
}

LADDERS = {"lse_split": FORWARD, "dz_chunk": DZ, "backward_atomic": ATOMIC}


@dataclass(frozen=True)
class Problem:
    """One call of the ops: k selected rows of N = k, hidden size D, vocabulary V, dtypes, optional features."""

    k: int = 4096
    dim: int = 1536
    vocab: int = 151936
    hidden_dtype: str = "bf16"
    weight_dtype: str = "bf16"
    features: bool = False  # entropy output and gradient under a soft-cap: the heaviest variant of every kernel

    @property
    def name(self) -> str:
        extra = "+feat" if self.features else ""
        return f"{self.hidden_dtype}/{self.weight_dtype}{extra}"


@dataclass
class Launch:
    """One intercepted kernel launch: which kernel, and the positional and keyword arguments it was given."""

    kernel: str
    args: tuple
    kwargs: dict

    @property
    def jit(self):
        """The JIT function (under the interpreter, a JIT twin of the same source and specialisation options)."""
        kernel = kernel_object(self.kernel)
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        return fn if hasattr(fn, "params") else _jit_twin(fn)


@functools.cache
def _jit_twin(interpreted):
    from triton.runtime.jit import JITFunction

    return JITFunction(interpreted.fn, **interpreted.kwargs)


@dataclass
class Build:
    """The outcome of compiling one kernel with one config for one target."""

    kernel: str
    problem: str
    arch: int
    config: str
    ok: bool = False
    error: str = ""
    registers: int = -1
    stack_bytes: int = -1  # local memory per thread: register spills (and local arrays)
    shared_bytes: int = -1
    shared_limit: int = 0
    seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return self.ok and self.shared_bytes <= self.shared_limit

    @property
    def spills(self) -> bool:
        return self.ok and self.stack_bytes > 0


def kernel_object(name: str):
    """The module attribute of kernel `name`: an Autotuner, or a JIT function."""
    module, attr = KERNELS[name]
    return getattr(module, attr)


@contextlib.contextmanager
def intercepted_launches(sink: list[Launch]) -> Iterator[None]:
    """Inside the block, a kernel launch appends its arguments to `sink` and returns without running anything."""
    saved = {}
    for name in KERNELS:
        kernel = kernel_object(name)

        def record(*args, grid=None, warmup=False, _name=name, **kwargs):
            sink.append(Launch(_name, args, kwargs))

        saved[name] = kernel.__dict__.get("run")
        kernel.run = record
    try:
        yield
    finally:
        for name, run in saved.items():
            kernel = kernel_object(name)
            if run is None:
                del kernel.run
            else:
                kernel.run = run


def launch_all(problem: Problem, device: str | torch.device = "meta") -> None:
    """Run every launcher once for `problem` on `device`: forward, both backwards with a trained and a frozen
    head, and the PG epilogue forward and backward (with kernels intercepted, meta tensors are enough)."""
    h_dtype, w_dtype = DTYPES[problem.hidden_dtype], DTYPES[problem.weight_dtype]
    k, dim, vocab = problem.k, problem.dim, problem.vocab
    hidden = torch.empty(k, dim, dtype=h_dtype, device=device)  # [N, D]
    weight = torch.empty(vocab, dim, dtype=w_dtype, device=device)  # [V, D]
    index = torch.zeros(k, dtype=torch.int64, device=device)  # [k]
    targets = torch.zeros(k, dtype=torch.int64, device=device)  # [k]
    rows = torch.zeros(k, dtype=torch.float32, device=device)  # [k] lse, entropy, gradients
    logit_map = LogitMap(0.9, 30.0 if problem.features else None, 1.0)
    entropy = rows if problem.features else None
    _lse_forward.lse_forward(hidden, weight, targets, index, logit_map, problem.features)
    for need_dw in (True, False):
        args = (hidden, weight, targets, index, rows, entropy, rows, entropy, True, need_dw, logit_map)
        _backward_gemm.backward_gemm(*args)
        _backward_atomic.backward_atomic(*args)
    logp = rows.clone().requires_grad_(True)
    loss, _ = pg_loss.pg_epilogue(logp, rows, rows, rows, rows, eps_low=0.2, eps_high=0.2, beta=0.1)
    torch.autograd.grad(loss.sum(), logp)


@functools.cache
def capture_launches(problem: Problem) -> tuple[Launch, ...]:
    """Every kernel launch of `launch_all(problem)`, in order (repeats included)."""
    launches: list[Launch] = []
    with intercepted_launches(launches):
        launch_all(problem)
    return tuple(launches)


def configs_for(launch: Launch) -> list[triton.Config | None]:
    """The configs the autotuner may pick for this launch (after its prune); [None] for a plain JIT kernel."""
    kernel = kernel_object(launch.kernel)
    if not isinstance(kernel, Autotuner):
        return [None]
    kernel.nargs = dict(zip(kernel.arg_names, launch.args, strict=False))
    try:
        return kernel.prune_configs(launch.kwargs)
    finally:
        kernel.nargs = None


def autotune_key(launch: Launch) -> tuple | None:
    """The key the autotuner caches its choice under for this launch (as `Autotuner.run` forms it), or None."""
    kernel = kernel_object(launch.kernel)
    if not isinstance(kernel, Autotuner):
        return None
    named = {**dict(zip(kernel.arg_names, launch.args, strict=False)), **launch.kwargs}
    named = {name: value for name, value in named.items() if name in kernel.arg_names}
    return tuple(named[k] for k in kernel.keys if k in named) + tuple(
        str(v.dtype) for v in named.values() if hasattr(v, "dtype")
    )


def _target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


def specialization(launch: Launch, arch: int = 90, config: triton.Config | None = None):
    """(kwargs, binder output) of this launch as Triton's JIT sees it: arg types and their divisibility/alignment."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if config is None and isinstance(kernel_object(launch.kernel), Autotuner):
        config = configs_for(launch)[0]  # the tile sizes are constexprs the binder needs
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(launch.jit.signature, launch.jit.params, backend)
    kwargs = {**launch.kwargs, **(config.all_kwargs() if config else {}), "debug": False}
    return backend, kwargs, binder(*launch.args, **kwargs)


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of the one kernel in `cubin`, read with the cuobjdump that ships with triton."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        tool = triton.knobs.nvidia.cuobjdump.path
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    registers = re.search(r"REG:(\d+)", out.stdout)
    stack = re.search(r"STACK:(\d+)", out.stdout)
    if not (registers and stack):
        raise RuntimeError(f"cuobjdump printed no resource usage: {out.stdout!r}")
    return int(registers.group(1)), int(stack.group(1))


def compile_launch(launch: Launch, config: triton.Config | None, arch: int, problem: str = "") -> Build:
    """Compile `launch` with `config` for sm_<arch> (sm_90a for 90) as `JITFunction.run` would; never raises."""
    from triton.compiler import ASTSource

    build = Build(launch.kernel, problem, arch, _describe(config), shared_limit=SHARED_LIMIT[arch])
    start = time.perf_counter()
    try:
        if INTERPRET:
            raise RuntimeError("TRITON_INTERPRET=1: the kernels are interpreter functions; unset it to compile")
        backend, kwargs, (bound, spec, options) = specialization(launch, arch, config)
        options, signature, constexprs, attrs = launch.jit._pack_args(backend, kwargs, bound, spec, options)
        source = ASTSource(launch.jit, signature, constexprs, attrs)
        compiled = triton.compile(source, target=_target(arch), options=options.__dict__)
        build.shared_bytes = int(compiled.metadata.shared)
        build.registers, build.stack_bytes = _resource_usage(compiled.asm["cubin"])
        build.ok = True
    except Exception as exc:  # a failed compile is a result to report, not the end of the sweep
        lines = str(exc).strip().splitlines()
        build.error = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    build.seconds = round(time.perf_counter() - start, 2)
    return build


def _describe(config: triton.Config | None) -> str:
    if config is None:
        return "-"
    tiles = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{tiles}, warps={config.num_warps}, stages={config.num_stages}"


Job = tuple[Problem, int, int, int]  # (problem, arch, launch number in capture_launches(problem), config number)


def plan(problems: list[Problem], archs: list[int], plain_only_for: tuple[int, ...] = ()) -> list[Job]:
    """One job per distinct compiled kernel: launches that Triton would compile to the same binary (same kernel,
    argument types, specialisations, constexprs and config) appear once. Archs in `plain_only_for` get only the
    problems without features (a shared-memory check there, the full matrix on the first arch)."""
    jobs, seen = [], set()
    for arch in archs:
        for problem in problems:
            if problem.features and arch in plain_only_for:
                continue
            for launch_no, launch in enumerate(capture_launches(problem)):
                for config_no, config in enumerate(configs_for(launch)):
                    _, kwargs, (_, spec, _) = specialization(launch, arch, config)
                    key = (launch.kernel, arch, repr(spec), repr(sorted(kwargs.items())))
                    if key not in seen:
                        seen.add(key)
                        jobs.append((problem, arch, launch_no, config_no))
    return jobs


def _run_job(job: Job) -> Build:
    problem, arch, launch_no, config_no = job
    launch = capture_launches(problem)[launch_no]
    return compile_launch(launch, configs_for(launch)[config_no], arch, problem.name)


def run_jobs(jobs: list[Job], workers: int = 2) -> list[Build]:
    """Compile the jobs in `workers` processes (LLVM and ptxas use one core each)."""
    if workers <= 1:
        return [_run_job(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run_job, jobs))


# The Qwen2-1.5B head in the dtypes tokrl serves: bf16 (+ the heaviest variant), fp32, fp32 hidden with a bf16 head.
QWEN2_1_5B = [
    Problem(hidden_dtype="bf16", weight_dtype="bf16"),
    Problem(hidden_dtype="bf16", weight_dtype="bf16", features=True),
    Problem(hidden_dtype="fp32", weight_dtype="fp32"),
    Problem(hidden_dtype="fp32", weight_dtype="bf16"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT), help="repeatable")
    parser.add_argument("--plain-only", type=int, action="append", default=[], help="arch: no +feat problems")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write every build as JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    builds = run_jobs(plan(QWEN2_1_5B, args.arch or [90], tuple(args.plain_only)), args.workers)
    for b in builds:
        status = "ok" if b.fits and not b.spills else ("SPILL" if b.fits else ("SMEM" if b.ok else "FAIL"))
        print(
            f"{status:5} sm_{b.arch} {b.kernel:15} {b.problem:14} {b.config:58} reg {b.registers:3} "
            f"stack {b.stack_bytes:4} smem {b.shared_bytes // 1024:3}K {b.seconds:5.1f}s {b.error}"
        )
    print(f"{len(builds)} kernels compiled in {time.perf_counter() - start:.0f} s")
    if args.json:
        ladders = {
            name: {"low": [_describe(c) for c in ladder.low], "ieee": [_describe(c) for c in ladder.ieee]}
            for name, ladder in LADDERS.items()
        }
        report = {
            "triton": triton.__version__,
            "ladders": ladders,
            "builds": [{**asdict(b), "fits": b.fits, "spills": b.spills} for b in builds],
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if all(b.fits for b in builds) else 1


if __name__ == "__main__":
    sys.exit(main())
