"""Pieces every Triton log-prob kernel shares: the fp32 logits tile, the d loss / d logits tile, dot flags.

Math, per selected row (z = hidden[index] @ weight.T / T, p = softmax(z), lse = logsumexp(z)):

    d logp / dz_j    = onehot_j - p_j
    d H / dz_j       = -p_j * (log p_j + H)           (H = -sum_j p_j log p_j, the entropy)
    dz_j (w.r.t. the untempered logits) = (g * onehot_j - p_j * (g + g_H * (log p_j + H))) / T

with g = d loss / d logp and g_H = d loss / d H per row.

Dtype contract: hidden and weight in the same dtype use it as the tl.dot operand dtype (bf16/fp16 on tensor
cores, fp32 with IEEE dots so that fp32 matches torch, never TF32); different dtypes (e.g. a bf16 hidden with
an fp32 head under autocast) are both upcast per tile and multiplied as fp32 IEEE dots. Accumulation is
always fp32. Under the interpreter bf16/fp16 operands are upcast too (its low-precision dot is wrong).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_flags(hidden_dtype: torch.dtype, weight_dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PRECISION) of the tile dots for these operand dtypes (see the module's dtype contract)."""
    upcast = hidden_dtype != weight_dtype or (INTERPRET and hidden_dtype != torch.float32)
    precision = "ieee" if (hidden_dtype == torch.float32 or upcast) else "tf32"  # tf32 unused by bf16/fp16 dots
    return upcast, precision


def only_for_precision(fp32_configs: list[triton.Config]):
    """An `early_config_prune` that keeps `fp32_configs` for IEEE fp32 dots and the others for bf16/fp16.

    IEEE fp32 dots run on CUDA cores, ~10x slower than bf16 tensor-core dots: benchmarking a whole config list
    on them at V = 151936 took minutes. One or two configs are enough there.
    """
    fp32_ids = {id(c) for c in fp32_configs}

    def prune(configs, named_args, **kwargs):
        want_fp32 = kwargs.get("PRECISION") == "ieee"
        return [c for c in configs if (id(c) in fp32_ids) == want_fp32]

    return prune


@triton.jit
def logits_tile(h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w,
                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """hidden[src] @ weight[cols].T in fp32: [BLOCK_M, BLOCK_V], accumulated over D in BLOCK_D chunks."""
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_mask = (d0 + offs_d) < D
        h = tl.load(h_ptr + src[:, None] * stride_h + (d0 + offs_d)[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip  # [BM, BD]
        w = tl.load(w_ptr + cols[None, :] * stride_w + (d0 + offs_d)[:, None],
                    mask=col_mask[None, :] & d_mask[:, None], other=0.0)  # fmt: skip  # [BD, BV]
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def dlogits_tile(z, cols, col_mask, tgt, lse, g, g_ent, ent, inv_temp, HAS_ENT_GRAD: tl.constexpr):
    """d loss / d (hidden @ weight.T) on one fp32 tile [BM, BV] (module docstring); 0 on padding columns.

    z: tempered logits [BM, BV]; tgt, lse, g, g_ent, ent: [BM] (g = g_ent = 0 on padding rows).
    """
    log_prob = z - lse[:, None]  # [BM, BV]
    prob = tl.where(col_mask[None, :], tl.exp(log_prob), 0.0)  # [BM, BV]
    if HAS_ENT_GRAD:
        coef = g[:, None] + g_ent[:, None] * (log_prob + ent[:, None])  # [BM, BV]
        soft = tl.where(col_mask[None, :], prob * coef, 0.0)  # padding columns: 0 * -inf would be NaN
    else:
        soft = prob * g[:, None]
    # The one-hot term is added on the fp32 tile: no low-precision cancellation of g * (1 - p).
    return (tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - soft) * inv_temp
