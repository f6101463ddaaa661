"""Autotune configs of every Triton kernel, in one place, and the autotune key's row-count bucket.

Each kernel has one ladder: `low` (bf16/fp16 operands on tensor cores, benchmarked by the autotuner) and one
`ieee` config (fp32 operands, and mixed dtypes upcast to fp32: IEEE dots run on the CUDA cores, ~10x slower, and
benchmarking a list of them at V = 151936 took minutes on an H200; one config means no benchmark at all).
The prune keeps `ieee` for PRECISION == "ieee" and `low` otherwise.

Every entry was compiled ahead of time for sm_90a with triton 3.9's ptxas at the Qwen2-1.5B head (D = 1536,
V = 151936, k = 4096; `tokrl_kernels._aot`, checked in CI by tests/kernels/test_aot_compile.py): registers and
local-memory stack per thread, shared memory per block (sm_90 allows 227 KiB, sm_80 163 KiB). "+feat" is the
entropy gradient with a soft-cap, the heaviest variant. Dropped after that check: the forward's (128, 256, 64)
(255 registers + 184 B of spills), every earlier dz config (24-400 B of spills; 900-1240 B with +feat), the
atomic (128, 256, 64, 3 stages) (272 KiB of shared memory: never launchable) and (128, 128, 64) (+feat 32 B of
spills), and the old fp32 configs (64, 128, 32) with 4 warps, which ptxas compiles to 32 registers and a
6.4-7.8 KiB stack when the head is bf16 and hidden fp32 (the UPCAST path).

Under the Triton interpreter each kernel has one config of few, large tiles (its cost is per op, not per element).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Autotune keys bucket the row count k: the first call's k (T-SPMO's ~50 rows, GRPO's thousands) no longer fixes
# the config for every later call, and at most log2(MAX / MIN) + 1 buckets are ever tuned.
ROW_BUCKET_MIN = 16
ROW_BUCKET_MAX = 8192


def row_bucket(rows: int) -> int:
    """The autotune key for a row count: the next power of two, clamped to [ROW_BUCKET_MIN, ROW_BUCKET_MAX]."""
    return min(ROW_BUCKET_MAX, max(ROW_BUCKET_MIN, 1 << max(rows - 1, 0).bit_length()))


def _tile(bm: int, bv: int, bd: int, warps: int, stages: int, grouped: bool) -> triton.Config:
    group = {"GROUP_M": 8 if not INTERPRET else 2} if grouped else {}
    return triton.Config({"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd, **group}, num_warps=warps, num_stages=stages)


@dataclass(frozen=True)
class Ladder:
    """The configs one kernel may run: `low` for bf16/fp16 dots, `ieee` for fp32 (and upcast) dots."""

    low: tuple[triton.Config, ...]
    ieee: tuple[triton.Config, ...]

    @property
    def configs(self) -> list[triton.Config]:
        return list(self.low) + [c for c in self.ieee if c not in self.low]

    def prune(self, configs, named_args, **kwargs) -> list[triton.Config]:
        """`early_config_prune`: the ieee configs for PRECISION == "ieee", the low-precision ones otherwise."""
        wanted = self.ieee if kwargs.get("PRECISION") == "ieee" else self.low
        return [c for c in configs if c in wanted]

    def autotune(self, key: list[str], **kwargs):
        """`triton.autotune` over this ladder, pruned by precision."""
        return triton.autotune(
            configs=self.configs, key=key, prune_configs_by={"early_config_prune": self.prune}, **kwargs
        )


def _ladder(low: list[tuple], ieee: tuple, grouped: bool, interpret: tuple) -> Ladder:
    if INTERPRET:
        only = (_tile(*interpret, grouped=grouped),)
        return Ladder(only, only)
    return Ladder(tuple(_tile(*c, grouped=grouped) for c in low), (_tile(*ieee, grouped=grouped),))


# (BLOCK_M, BLOCK_V, BLOCK_D, warps, stages), each with what sm_90a compiled it to: registers / stack bytes per thread
# for the plain kernel and the +feat one (bf16, or the dtypes named), and shared memory per block.
FORWARD = _ladder(
    low=[
        (128, 128, 64, 8, 3),  # 254 / 0, +feat 255 / 0; 96 KiB
        (64, 256, 64, 8, 4),  # 221 / 0, +feat 208 / 0; 160 KiB
        (128, 128, 32, 8, 4),  # 220 / 0, +feat 255 / 0; 64 KiB
    ],
    ieee=(64, 128, 16, 8, 3),  # fp32 198 / 0 (+feat 168 / 0); fp32 hidden, bf16 head 246 / 0 (+feat 252 / 0); 24 KiB
    grouped=False,
    interpret=(16, 512, 64, 4, 1),
)
DZ = _ladder(
    low=[
        (128, 128, 64, 8, 3),  # 172 / 0, +feat 238 / 0; 96 KiB
        (128, 128, 64, 8, 4),  # 172 / 0, +feat 238 / 0; 128 KiB
        (64, 256, 64, 8, 3),  # 139 / 0, +feat 249 / 0; 120 KiB
        (64, 128, 64, 4, 3),  # 168 / 0, +feat 214 / 0; 72 KiB (few rows: T-SPMO's ~50)
    ],
    ieee=(64, 128, 16, 8, 3),  # fp32 196 / 0; fp32 hidden, bf16 head 232 / 0 (+feat 238 / 0); 24 KiB
    grouped=True,
    interpret=(16, 256, 64, 4, 1),
)
ATOMIC = _ladder(
    low=[
        (64, 128, 64, 8, 3),  # 137 / 0 (frozen head 122 / 0), +feat 185 / 0; 136 KiB
        (128, 64, 64, 8, 3),  # 167 / 0 (frozen head 122 / 0), +feat 187 / 0; 120 KiB
    ],
    # fp32 208 / 0; fp32 hidden, bf16 head 255 / 168 (frozen 104; sm_80 296): no config of a 8-config sweep was
    # clean there (the least was 160 B); this variant is the non-default backward, kept for comparison.
    ieee=(64, 128, 16, 8, 3),
    grouped=True,
    interpret=(16, 512, 64, 4, 1),
)
