"""Pieces every Triton log-prob kernel shares: the products tile, the logit map, the d loss / d products tile.

Math, per selected row (y = hidden[index] @ weight.T, z = map(y) as in `tokrl_kernels._logits`, p = softmax(z),
lse = logsumexp(z)):

    d logp / dz_j    = onehot_j - p_j
    d H / dz_j       = -p_j * (log p_j + H)           (H = -sum_j p_j log p_j, the entropy)
    dy_j = (g * onehot_j - p_j * (g + g_H * (log p_j + H))) * dz_j/dy_j,  dz/dy = grad_scale (* (1 - t_j^2))

with g = d loss / d logp and g_H = d loss / d H per row, t = tanh(y * cap_in) under a soft-cap.

Dtype contract: hidden and weight in the same dtype use it as the tl.dot operand dtype (bf16/fp16 on tensor
cores, fp32 with IEEE dots so that fp32 matches torch, never TF32); different dtypes (e.g. a bf16 hidden with
an fp32 head under autocast) are both upcast per tile and multiplied as fp32 IEEE dots. Accumulation is
always fp32. Under the interpreter bf16/fp16 operands are upcast too (its low-precision dot is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokrl_kernels._configs import INTERPRET


def dot_flags(hidden_dtype: torch.dtype, weight_dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PRECISION) of the tile dots for these operand dtypes (see the module's dtype contract)."""
    upcast = hidden_dtype != weight_dtype or (INTERPRET and hidden_dtype != torch.float32)
    precision = "ieee" if (hidden_dtype == torch.float32 or upcast) else "tf32"  # tf32 unused by bf16/fp16 dots
    return upcast, precision


@triton.jit
def logits_tile(
    h_ptr,
    w_ptr,
    src,
    cols,
    row_mask,
    col_mask,
    D,
    stride_h,
    stride_w,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """hidden[src] @ weight[cols].T in fp32: [BLOCK_M, BLOCK_V], accumulated over D in BLOCK_D chunks."""
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_mask = (d0 + offs_d) < D
        h = tl.load(
            h_ptr + src[:, None] * stride_h + (d0 + offs_d)[None, :],
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # [BM, BD]
        w = tl.load(
            w_ptr + cols[None, :] * stride_w + (d0 + offs_d)[:, None],
            mask=col_mask[None, :] & d_mask[:, None],
            other=0.0,
        )  # [BD, BV]
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    return acc


# tanh(u) = u + u^3 P(u^2) for |u| < 0.625: P fitted here (weighted least squares on the relative error of tanh,
# float64, then rounded to fp32); < 1 ulp in fp32 on that range. Above it (1 - e) / (1 + e), e = exp(-2|u|), < 2 ulp.
_TANH_P0 = tl.constexpr(-0.3333328366279602)
_TANH_P1 = tl.constexpr(0.13331511616706848)
_TANH_P2 = tl.constexpr(-0.0537458211183548)
_TANH_P3 = tl.constexpr(0.02065940387547016)
_TANH_P4 = tl.constexpr(-0.005727837793529034)


@triton.jit
def tanh_fp32(u):
    """tanh of an fp32 tile within 2 ulp, from exp and arithmetic only (libdevice does not run in the interpreter)."""
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    large = (1.0 - e) / (1.0 + e)  # no cancellation: tanh >= 0.55 here; e = 0 gives 1 (u = +-inf too)
    large = tl.where(u < 0.0, -large, large)
    u2 = u * u
    poly = (((_TANH_P4 * u2 + _TANH_P3) * u2 + _TANH_P2) * u2 + _TANH_P1) * u2 + _TANH_P0
    return tl.where(a < 0.625, u + u * u2 * poly, large)  # NaN fails a < 0.625 and stays NaN in `large`


@triton.jit
def mapped_logits(y, z_scale, cap_in, HAS_SOFTCAP: tl.constexpr):
    """(z, t) from a products tile y [BM, BV]: z = y * z_scale, or t = tanh(y * cap_in), z = t * z_scale.

    Without a soft-cap t is y (unused by `slope_tile`); the map's constants come from `LogitMap`.
    """
    if HAS_SOFTCAP:
        t = tanh_fp32(y * cap_in)
        return t * z_scale, t
    else:
        return y * z_scale, y


@triton.jit
def slope_tile(t, grad_scale, HAS_SOFTCAP: tl.constexpr):
    """dz/dy: grad_scale * (1 - t^2) on the tile under a soft-cap, the scalar grad_scale otherwise."""
    if HAS_SOFTCAP:
        return grad_scale * ((1.0 - t) * (1.0 + t))
    else:
        return grad_scale


@triton.jit
def dlogits_tile(z, cols, col_mask, tgt, lse, g, g_ent, ent, slope, HAS_ENT_GRAD: tl.constexpr):
    """d loss / d (hidden @ weight.T) on one fp32 tile [BM, BV] (module docstring); 0 on padding columns.

    z: mapped logits [BM, BV]; tgt, lse, g, g_ent, ent: [BM] (g = g_ent = 0 on padding rows); slope: dz/dy, a
    scalar or [BM, BV] (`slope_tile`).
    """
    log_prob = z - lse[:, None]  # [BM, BV]
    prob = tl.where(col_mask[None, :], tl.exp(log_prob), 0.0)  # [BM, BV]
    if HAS_ENT_GRAD:
        coef = g[:, None] + g_ent[:, None] * (log_prob + ent[:, None])  # [BM, BV]
        soft = tl.where(col_mask[None, :], prob * coef, 0.0)  # padding columns: 0 * -inf would be NaN
    else:
        soft = prob * g[:, None]
    # The one-hot term is added on the fp32 tile: no low-precision cancellation of g * (1 - p).
    return (tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - soft) * slope
