"""Triton backward, atomic variant: one program per (row tile, vocab tile) adds its share into fp32 dH / dW.

Kept beside the default chunked-GEMM backward (`_backward_gemm`) so that one GPU run can time both
(`tokrl_kernels.triton_logprob.backward_variant("atomic")`). Each program recomputes its z tile, forms dz in
fp32 (`dlogits_tile`), then for each D chunk atomically adds dz @ W_tile into the fp32 dH rows (HAS_DH) and
dz^T @ H_rows into the fp32 dW (HAS_DW); atomics make repeated indices add up for free. Cost: k * D * V / BLOCK_V
fp32 atomic adds into dH (about 30 GB at k = 4096, D = 1536, V = 151936): the bottleneck measured on an H200
(benchmarks/NOTES.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokrl_kernels._configs import ATOMIC, row_bucket
from tokrl_kernels._logits import LogitMap
from tokrl_kernels._triton_tiles import dlogits_tile, dot_flags, logits_tile, mapped_logits, slope_tile


# Keyed on the bucketed row count (`row_bucket`), not on k; k and the row vectors are never specialised.
@ATOMIC.autotune(
    key=["D", "V", "K_BUCKET", "HAS_DH", "HAS_DW", "HAS_ENT_GRAD", "HAS_SOFTCAP", "UPCAST"],
    reset_to_zero=["dh_ptr", "dw_ptr"],
)
@triton.jit(
    do_not_specialize=["k", "K_BUCKET"],
    do_not_specialize_on_alignment=[
        "k",
        "K_BUCKET",
        "index_ptr",
        "target_ptr",
        "lse_ptr",
        "ent_ptr",
        "grad_ptr",
        "grad_ent_ptr",
    ],
)
def _backward_kernel(
    h_ptr,
    w_ptr,
    index_ptr,
    target_ptr,
    lse_ptr,
    ent_ptr,
    grad_ptr,
    grad_ent_ptr,
    dh_ptr,
    dw_ptr,
    k,
    K_BUCKET,
    D,
    V,
    stride_h,
    stride_w,
    z_scale,
    cap_in,
    grad_scale,
    HAS_DH: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_ENT_GRAD: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One (row tile, vocab tile): recompute z, dz (fp32), atomically add into dH (HAS_DH) and dW (HAS_DW)."""
    pid = tl.program_id(0).to(tl.int64)
    n_m = tl.cdiv(k, BLOCK_M)
    n_v = tl.cdiv(V, BLOCK_V)
    # Grouped order: GROUP_M row tiles sweep the vocabulary together, so their weight tiles hit in L2.
    per_group = GROUP_M * n_v
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    m = first_m + (pid % per_group) % group_rows
    n = (pid % per_group) // group_rows

    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < k
    src = tl.load(index_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BM]
    tgt = tl.load(target_ptr + rows, mask=row_mask, other=-1).to(tl.int64)  # [BM]
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)  # [BM]
    g = tl.load(grad_ptr + rows, mask=row_mask, other=0.0)  # [BM] (0 on padding rows)
    if HAS_ENT_GRAD:
        g_ent = tl.load(grad_ent_ptr + rows, mask=row_mask, other=0.0)  # [BM]
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)  # [BM]
    else:
        g_ent = g
        ent = lse
    cols = n * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
    col_mask = cols < V

    y = logits_tile(
        h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w, BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION
    )  # [BM, BV]
    z, t = mapped_logits(y, z_scale, cap_in, HAS_SOFTCAP)  # [BM, BV]
    slope = slope_tile(t, grad_scale, HAS_SOFTCAP)  # dz/dy: scalar or [BM, BV]
    dz = dlogits_tile(z, cols, col_mask, tgt, lse, g, g_ent, ent, slope, HAS_ENT_GRAD)  # [BM, BV] fp32
    if not UPCAST:
        # Tensor-core operands in the input dtype (as torch's own backward); fp32 stays fp32.
        dz = dz.to(w_ptr.dtype.element_ty)

    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d_mask = (d0 + offs_d) < D
        if HAS_DH:
            w = tl.load(
                w_ptr + cols[:, None] * stride_w + (d0 + offs_d)[None, :],
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            )  # [BV, BD]
            if UPCAST:
                w = w.to(tl.float32)
            dh = tl.dot(dz, w, input_precision=PRECISION)  # [BM, BD]
            tl.atomic_add(
                dh_ptr + src[:, None] * D + (d0 + offs_d)[None, :],
                dh,
                mask=row_mask[:, None] & d_mask[None, :],
                sem="relaxed",
            )
        if HAS_DW:
            h = tl.load(
                h_ptr + src[:, None] * stride_h + (d0 + offs_d)[None, :],
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )  # [BM, BD]
            if UPCAST:
                h = h.to(tl.float32)
            dw = tl.dot(tl.trans(dz), h, input_precision=PRECISION)  # [BV, BD]
            tl.atomic_add(
                dw_ptr + cols[:, None] * D + (d0 + offs_d)[None, :],
                dw,
                mask=col_mask[:, None] & d_mask[None, :],
                sem="relaxed",
            )


def backward_atomic(
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
    """(dH [N, D] fp32 or None, dW [V, D] fp32 or None); grad_entropy None = no entropy term."""
    k, (vocab, dim) = index.numel(), weight.shape
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_dh else None  # [N, D]
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None  # [V, D]
    if k > 0 and (need_dh or need_dw):
        upcast, precision = dot_flags(hidden.dtype, weight.dtype)
        has_ent = grad_entropy is not None
        placeholder = grad_h if need_dh else grad_w  # a pointer the kernel never touches (constexpr-off branch)
        grid = lambda meta: (triton.cdiv(k, meta["BLOCK_M"]) * triton.cdiv(vocab, meta["BLOCK_V"]),)
        _backward_kernel[grid](
            hidden,
            weight,
            index,
            targets,
            lse,
            entropy if has_ent else lse,
            grad_logp,
            grad_entropy if has_ent else grad_logp,
            placeholder if grad_h is None else grad_h,
            placeholder if grad_w is None else grad_w,
            k,
            row_bucket(k),
            dim,
            vocab,
            hidden.stride(0),
            weight.stride(0),
            logit_map.z_scale,
            logit_map.cap_in,
            logit_map.grad_scale,
            HAS_DH=need_dh,
            HAS_DW=need_dw,
            HAS_ENT_GRAD=has_ent,
            HAS_SOFTCAP=logit_map.has_softcap,
            UPCAST=upcast,
            PRECISION=precision,
        )
    return grad_h, grad_w
