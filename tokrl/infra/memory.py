"""Peak memory of a phase: the CUDA allocator's peak, or on CPU the process's peak resident set size; and the
memory still free on a device.

Memory on CUDA is the caching allocator's peak allocated bytes (torch.cuda.max_memory_allocated, weights
included) since the phase began. On CPU it is the process's peak resident set size (VmHWM) since the phase
began, reset through /proc/self/clear_refs on Linux: it counts everything the process holds (Python, the
model, libraries), not tensors alone. Where that reset is not available (not Linux) it is the peak since the
process started (ru_maxrss), which never decreases.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MEMINFO = Path("/proc/meminfo")


def _proc_kib(path: Path, key: str) -> int | None:
    """The kB value of `key` in a /proc status-style file ("Key:   1234 kB"); None where it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`: CUDA's free device memory, on CPU the system's MemAvailable
    (Linux); None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    kib = _proc_kib(_MEMINFO, "MemAvailable")
    return None if kib is None else kib * 2**10


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mib`: the CUDA allocator's peak, or the process's RSS peak (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # not Linux, or not permitted: the peak stays the process's lifetime peak (see the module doc)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB since `reset_peak_memory(device)`: CUDA allocated bytes, else the process's RSS peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kib = _proc_kib(_PROC_STATUS, "VmHWM")
    if peak_kib is not None:
        return peak_kib / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
