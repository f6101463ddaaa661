"""Triton + cuBLAS backward, the default: dz one vocabulary chunk at a time, then two GEMMs per chunk.

For a block of R selected rows (R <= k) and a vocabulary chunk [v0, v1) of Vc columns:

    dz      = (g * onehot - p * (g + g_H (log p + H))) dz/dy   [R, Vc], `_dz_chunk_kernel`: z recomputed
                                                                 tile-wise in fp32, stored in the input dtype
                                                                 (dz/dy: the logit map's slope, `_logits`)
    dH_rows += dz @ W[v0:v1]                                    [R, D]  fp32 accumulation (cuBLAS)
    dW[v0:v1] += dz^T @ H[index_block]                          [Vc, D] fp32 accumulation (cuBLAS), trained head
    dH.index_add_(0, index_block, dH_rows)                      repeated indices add up

No atomics: every output element is written by one GEMM per (row block, chunk). The dz tile is rounded to the
input dtype before the GEMMs, as torch's own backward rounds its [k, V] logits gradient; fp32 inputs keep fp32.

Workspace (bounded by WORKSPACE_BYTES = 60 MiB): dz [R, Vc] in the input dtype, dH_rows [R, D] fp32 and, for a
trained head, the gathered rows H[index_block] [R, D]. R = min(k, 4096) (less when D is so large that the
row buffers would take more than 3/4 of the budget); Vc fills the rest, a multiple of 256. At D = 1536,
k = 4096: Vc = 4608 (frozen, 33 chunks) or 3072 (trained, 50 chunks).

Cost at k = N = 4096, D = 1536, V = 151936 (bf16, H200 ~790 TFLOP/s, ~4.3 TB/s): recompute z 2kDV = 1.91 TFLOP,
dH GEMM 1.91 TFLOP, dW GEMM 1.91 TFLOP (trained only); dz written and read once, 2 * 2kV bytes = 2.5 GB
(~0.6 ms); W read 2-3 times (0.47 GB each). See benchmarks/NOTES.md for the prediction and the measurements.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from tokrl_kernels._configs import DZ, row_bucket
from tokrl_kernels._logits import LogitMap
from tokrl_kernels._triton_tiles import dlogits_tile, dot_flags, logits_tile, mapped_logits, slope_tile

# 60 MiB: the [k]-sized buffers and the forward statistics fit beside it under the 64 MiB workspace target.
# A module attribute: tests lower it to force several row blocks and vocabulary chunks.
WORKSPACE_BYTES = 60 * 2**20
_MAX_ROW_BLOCK = 4096
_ROW_ALIGN = 16  # row blocks start at multiples of 16 rows: every [R]-slice of a row vector stays 64-byte aligned
_CHUNK_ALIGN = 256


# Keyed on the bucketed row count of the block (`row_bucket`), not on it or on the chunk width (both follow k,
# which changes every RL step). Neither the row count nor the [R]-slices of the row vectors are specialised
# (divisibility by 16, pointer alignment): a new k must not compile a new kernel mid-run.
@DZ.autotune(key=["D", "ROWS_BUCKET", "HAS_ENT_GRAD", "HAS_SOFTCAP", "UPCAST"])
@triton.jit(
    do_not_specialize=["n_rows", "ROWS_BUCKET"],
    do_not_specialize_on_alignment=[
        "n_rows",
        "ROWS_BUCKET",
        "index_ptr",
        "target_ptr",
        "lse_ptr",
        "ent_ptr",
        "grad_ptr",
        "grad_ent_ptr",
    ],
)
def _dz_chunk_kernel(
    h_ptr,
    w_ptr,
    index_ptr,
    target_ptr,
    lse_ptr,
    ent_ptr,
    grad_ptr,
    grad_ent_ptr,
    dz_ptr,
    n_rows,
    ROWS_BUCKET,
    D,
    v_start,
    v_end,
    stride_h,
    stride_w,
    stride_dz,
    z_scale,
    cap_in,
    grad_scale,
    HAS_ENT_GRAD: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dz[r, c] for the block's rows r < n_rows and the chunk's columns v_start + c < v_end (module docstring)."""
    pid = tl.program_id(0).to(tl.int64)
    n_m = tl.cdiv(n_rows, BLOCK_M)
    n_v = tl.cdiv(v_end - v_start, BLOCK_V)
    # Grouped order: GROUP_M row tiles sweep the chunk together, so their weight tiles hit in L2.
    per_group = GROUP_M * n_v
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    m = first_m + (pid % per_group) % group_rows
    n = (pid % per_group) // group_rows

    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] rows of the block
    row_mask = rows < n_rows
    src = tl.load(index_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BM] rows of hidden
    tgt = tl.load(target_ptr + rows, mask=row_mask, other=-1).to(tl.int64)  # [BM]
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)  # [BM]
    g = tl.load(grad_ptr + rows, mask=row_mask, other=0.0)  # [BM]
    if HAS_ENT_GRAD:
        g_ent = tl.load(grad_ent_ptr + rows, mask=row_mask, other=0.0)  # [BM]
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)  # [BM]
    else:
        g_ent = g
        ent = lse
    cols = v_start + n * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV] vocabulary columns
    col_mask = cols < v_end

    y = logits_tile(
        h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w, BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION
    )  # [BM, BV]
    z, t = mapped_logits(y, z_scale, cap_in, HAS_SOFTCAP)  # [BM, BV]
    slope = slope_tile(t, grad_scale, HAS_SOFTCAP)  # dz/dy: scalar or [BM, BV]
    dz = dlogits_tile(z, cols, col_mask, tgt, lse, g, g_ent, ent, slope, HAS_ENT_GRAD)  # [BM, BV] fp32
    out = dz_ptr + rows[:, None] * stride_dz + (cols - v_start)[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@functools.cache
def _has_fp32_out_gemm(device_type: str) -> bool:
    """Whether torch.addmm takes out_dtype=float32 for bf16 operands here (torch >= 2.8 on CUDA)."""
    if device_type != "cuda":
        return False
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
        acc = torch.zeros(2, 2, dtype=torch.float32, device=device_type)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return bool((acc == 2).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with fp32 accumulation; acc is fp32 (may be a row slice of a larger contiguous tensor)."""
    if a.dtype != b.dtype or a.dtype == torch.float32:
        torch.addmm(acc, a.float(), b.float(), out=acc)  # no-op casts for fp32 operands
    elif _has_fp32_out_gemm(acc.device.type):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)  # bf16/fp16 operands, fp32 out: no rounding
    else:
        acc += (a @ b).float()  # older torch: cuBLAS still accumulates in fp32, rounds once per chunk


def _dz_grid(n_rows: int, n_cols: int, meta: dict) -> tuple[int]:
    return (triton.cdiv(n_rows, meta["BLOCK_M"]) * triton.cdiv(n_cols, meta["BLOCK_V"]),)


def plan_blocks(k: int, dim: int, vocab: int, dz_bytes: int, need_dw: bool, row_bytes: int) -> tuple[int, int]:
    """(rows per block R, vocabulary columns per chunk Vc) such that the workspace fits WORKSPACE_BYTES."""
    per_row = 4 * dim + (row_bytes * dim if need_dw else 0)  # dH_rows fp32 + gathered rows
    # Row buffers may take 3/4 of the budget: k = 4096 at D = 1536 then stays one block, trained head included.
    rows = max(1, min(k, _MAX_ROW_BLOCK, (WORKSPACE_BYTES * 3 // 4) // per_row))
    if rows < k:
        rows = max(_ROW_ALIGN, rows // _ROW_ALIGN * _ROW_ALIGN)
    room = WORKSPACE_BYTES - rows * per_row
    chunk = max(_CHUNK_ALIGN, room // (dz_bytes * rows) // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return rows, min(chunk, vocab)


def backward_gemm(
    hidden,
    weight,
    targets,
    index,
    lse,
    entropy,
    grad_logp,
    grad_entropy,
    need_dh: bool,
    need_dw: bool,
    logit_map: LogitMap,
):
    """(dH [N, D] fp32 or None, dW [V, D] or None); grad_entropy None = no entropy term.

    dW is fp32 when several row blocks accumulate into it; with one block (k <= R) each chunk's GEMM writes its
    rows once, straight in the GEMM dtype (fp32 accumulation inside cuBLAS, one rounding: as torch's backward),
    which saves the fp32 [V, D] buffer, its zeroing and the cast (~1.4 GB of traffic at V = 151936, D = 1536).
    """
    k, (vocab, dim) = index.numel(), weight.shape
    if k == 0 or not (need_dh or need_dw):
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_dh else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        return grad_h, grad_w
    upcast, precision = dot_flags(hidden.dtype, weight.dtype)
    dz_dtype = torch.float32 if upcast else weight.dtype  # the GEMM operand dtype
    has_ent = grad_entropy is not None
    rows_per_block, chunk = plan_blocks(
        k, dim, vocab, torch.empty(0, dtype=dz_dtype).element_size(), need_dw, hidden.element_size()
    )
    one_block = rows_per_block >= k
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_dh else None  # [N, D]
    grad_w = None
    if need_dw:  # [V, D]; every row written below when one block covers k
        grad_w = (torch.empty if one_block else torch.zeros)(
            weight.shape, dtype=dz_dtype if one_block else torch.float32, device=weight.device
        )
    dz = torch.empty(rows_per_block, chunk, dtype=dz_dtype, device=hidden.device)  # [R, Vc] workspace
    d_rows = torch.empty(rows_per_block, dim, dtype=torch.float32, device=hidden.device) if need_dh else None
    for r0 in range(0, k, rows_per_block):
        r1 = min(r0 + rows_per_block, k)
        idx = index[r0:r1]  # [r]
        picked = hidden.index_select(0, idx) if need_dw else None  # [r, D] input dtype
        if need_dh:
            d_rows[: r1 - r0].zero_()
        for v0 in range(0, vocab, chunk):
            v1 = min(v0 + chunk, vocab)
            grid = functools.partial(_dz_grid, r1 - r0, v1 - v0)
            _dz_chunk_kernel[grid](
                hidden,
                weight,
                idx,
                targets[r0:r1],
                lse[r0:r1],
                entropy[r0:r1] if has_ent else lse[r0:r1],
                grad_logp[r0:r1],
                grad_entropy[r0:r1] if has_ent else grad_logp[r0:r1],
                dz,
                r1 - r0,
                row_bucket(r1 - r0),
                dim,
                v0,
                v1,
                hidden.stride(0),
                weight.stride(0),
                dz.stride(0),
                logit_map.z_scale,
                logit_map.cap_in,
                logit_map.grad_scale,
                HAS_ENT_GRAD=has_ent,
                HAS_SOFTCAP=logit_map.has_softcap,
                UPCAST=upcast,
                PRECISION=precision,
            )
            tile = dz[: r1 - r0, : v1 - v0]  # [r, vc]
            if need_dh:
                _addmm_fp32_(d_rows[: r1 - r0], tile, weight[v0:v1])  # [r, D]
            if need_dw and one_block:
                torch.mm(tile.T, picked.to(dz_dtype), out=grad_w[v0:v1])  # [vc, D] written once
            elif need_dw:
                _addmm_fp32_(grad_w[v0:v1], tile.T, picked)  # [vc, D] accumulated over row blocks
        if need_dh:
            grad_h.index_add_(0, idx, d_rows[: r1 - r0])  # repeated indices add up
    return grad_h, grad_w
