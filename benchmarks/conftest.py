"""pytest-benchmark setup for `pytest benchmarks --benchmark-only`: says which device the suite ran on.

The header line and the JSON's machine_info name the torch device, so a CPU run can never pass for a GPU
one; report.py labels tables from each benchmark's `extra_info["device"]`.

On CPU the suite runs with ONE intra-op thread (override: TOKRL_BENCH_THREADS). The benchmark machine's
2 cores are shared: with 2 OpenMP threads, a descheduled thread stalls every barrier, and medians of the
same call swung by 5x between runs; with one thread they repeat within about 20%.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench_utils, whatever pytest's import mode

from bench_utils import ON_CUDA, TRITON_VERSION, device_name  # noqa: E402

if not ON_CUDA:
    torch.set_num_threads(int(os.environ.get("TOKRL_BENCH_THREADS", "1")))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "lease: the small kernel subset a short GPU lease can run (see NOTES.md)")


def pytest_report_header(config) -> list[str]:
    if ON_CUDA:
        return [f"tokrl benchmarks on {device_name()}: Qwen2-1.5B head shapes, bf16, all providers that can run"]
    return [
        f"tokrl benchmarks on CPU (no CUDA device, {torch.get_num_threads()} torch thread(s)): small shapes, "
        "fp32, PyTorch providers only; liger and tokrl (Triton) are skipped, GPU figures are pending"
    ]


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    machine_info["torch_device"] = device_name()
    machine_info["torch_version"] = torch.__version__
    machine_info["triton_version"] = TRITON_VERSION
    machine_info["cuda_version"] = torch.version.cuda
    machine_info["torch_threads"] = torch.get_num_threads()
