"""Triton: log-probs of target tokens at selected rows, straight from hidden states and the LM head.

Math, per selected row i (k rows; `index[i]` picks a row of hidden [N, D]; weight is [V, D]):

    z      = hidden[index[i]] @ weight.T / T          [V] fp32 (bf16/fp16 operands, fp32 accumulation)
    lse_i  = logsumexp(z)                              fp32
    logp_i = z[targets[i]] - lse_i                     fp32, <= 0
    dz     = g_i * (onehot(targets[i]) - softmax(z)) / T          (g = d loss / d logp_i)
    dH[index[i]] += dz @ weight     dW += dz^T @ hidden[index[i]]    (repeated indices add up)

Forward (`_lse_split_kernel` + `_merge_kernel`): a 1-D grid over (vocabulary split s, row tile m), row
tiles fastest, so the programs running together read the same weight columns and share them through L2.
Rows are read through `index` (no gathered copy of hidden). Each program sweeps its split in [BLOCK_V]
tiles, accumulating z over D chunks in fp32, and keeps an online (max, sum of exp, target logit); the target
logit is read from the same fp32 tile. The merge combines the splits per row into lse and logp.
Splits exist so that small k still fills the GPU: their count is chosen from k, V and the SM count.

Backward (`_backward_kernel`): a 1-D grid over (row tile, vocab tile), grouped so neighbouring programs share
both weight and hidden tiles. Each program recomputes its z tile, forms dz in fp32, then for each D chunk
atomically adds dz @ W_tile into the fp32 dH rows and (only when weight requires grad) dz^T @ H_rows into
the fp32 dW; atomics make repeated indices add up for free.

Memory: saved for backward = lse [k] fp32 (plus the inputs themselves). Extra forward workspace is the
split statistics, 3 * n_splits * k fp32 <= 3 * (1024 * SMs + k) floats (n_splits shrinks as k grows: ~1.6 MiB
+ 12 B per row on an H100). Backward adds the fp32 gradient accumulators [N, D] (and [V, D]) only. Nothing of
size [k, V] is ever allocated.

Under the Triton interpreter (TRITON_INTERPRET=1) bf16/fp16 `tl.dot` operands are upcast to fp32 (the
interpreter's low-precision dot is wrong) and autotuning is replaced by one small fixed config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    # The interpreter's cost is per op, not per element: few large tiles; BLOCK_D=64 still splits D=72 in two.
    _FWD_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_V": 512, "BLOCK_D": 64})]
    _BWD_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_V": 512, "BLOCK_D": 64, "GROUP_M": 2})]
else:
    _FWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bm, bv, bd, w, s in [
            (128, 256, 64, 8, 3),
            (128, 128, 64, 8, 4),
            (128, 128, 64, 4, 4),
            (64, 256, 64, 8, 4),
            (128, 256, 32, 8, 4),
        ]
    ]
    _BWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bv, bd, w, s in [
            (128, 256, 64, 8, 3),
            (128, 128, 64, 8, 3),
            (128, 128, 64, 4, 3),
            (64, 128, 64, 4, 4),
            (256, 128, 64, 8, 3),
        ]
    ]
# Split width is a multiple of every forward BLOCK_V, so only the last split has a ragged tile.
_SPLIT_ALIGN = max(cfg.kwargs["BLOCK_V"] for cfg in _FWD_CONFIGS)


@dataclass(frozen=True)
class _Options:
    """Non-tensor options of one call."""

    temperature: float
    n_splits: int  # vocabulary splits of the forward grid
    split_v: int  # vocabulary columns per split (multiple of _SPLIT_ALIGN)


@triton.jit
def _logits_tile(h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w,
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


# Not keyed on k or SPLIT_V: k changes every RL step, and re-tuning each time would cost more than it wins.
@triton.autotune(configs=_FWD_CONFIGS, key=["D", "V"])
@triton.jit
def _lse_split_kernel(h_ptr, w_ptr, index_ptr, target_ptr, stats_ptr, k, D, V, stride_h, stride_w, inv_temp,
                      SPLIT_V, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                      UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Per (split, row tile): running max, sum of exp and target logit of z over the split's columns."""
    pid = tl.program_id(0).to(tl.int64)
    n_row_tiles = tl.cdiv(k, BLOCK_M)
    split = pid // n_row_tiles
    rows = (pid % n_row_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < k
    src = tl.load(index_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BM] rows of hidden
    tgt = tl.load(target_ptr + rows, mask=row_mask, other=-1).to(tl.int64)  # [BM]

    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    tgt_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    v_start = split * SPLIT_V
    v_end = tl.minimum(v_start + SPLIT_V, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BV]
        col_mask = cols < v_end
        z = _logits_tile(h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w,
                         BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION) * inv_temp  # fmt: skip  # [BM, BV]
        z = tl.where(col_mask[None, :], z, float("-inf"))
        tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        # NaN-propagating max: a NaN logit (NaN hidden, inf * 0 weight) must reach lse, as in torch.
        new_max = tl.maximum(run_max, tl.max(z, axis=1), propagate_nan=tl.PropagateNan.ALL)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
    # stats is [3, n_splits, k]: (max, sum of exp, target logit) per split and row.
    n_splits = tl.cdiv(V, SPLIT_V)
    out = stats_ptr + split * k + rows
    tl.store(out, run_max, mask=row_mask)
    tl.store(out + n_splits * k, run_sum, mask=row_mask)
    tl.store(out + 2 * n_splits * k, tgt_logit, mask=row_mask)


@triton.jit
def _merge_kernel(stats_ptr, logp_ptr, lse_ptr, k, n_splits, BLOCK: tl.constexpr):
    """lse = log sum_s exp(max_s) * sum_s over splits; logp = target logit (found in one split) - lse."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = rows < k
    run_max = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK,), dtype=tl.float32)
    tgt_logit = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, n_splits):
        m_s = tl.load(stats_ptr + s * k + rows, mask=mask, other=0.0)
        sum_s = tl.load(stats_ptr + (n_splits + s) * k + rows, mask=mask, other=1.0)  # padding rows: log(1)
        tgt_logit += tl.load(stats_ptr + (2 * n_splits + s) * k + rows, mask=mask, other=0.0)
        new_max = tl.maximum(run_max, m_s, propagate_nan=tl.PropagateNan.ALL)
        run_sum = run_sum * tl.exp(run_max - new_max) + sum_s * tl.exp(m_s - new_max)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(lse_ptr + rows, lse, mask=mask)
    # lse >= max >= target logit in exact arithmetic; the clamp only guards rounding (log-probs are <= 0).
    # A where, not tl.minimum: minimum drops a NaN operand, and a NaN log-prob must stay NaN.
    logp = tgt_logit - lse
    tl.store(logp_ptr + rows, tl.where(logp > 0.0, 0.0, logp), mask=mask)


@triton.autotune(configs=_BWD_CONFIGS, key=["D", "V", "HAS_DW"], reset_to_zero=["dh_ptr", "dw_ptr"])
@triton.jit
def _backward_kernel(h_ptr, w_ptr, index_ptr, target_ptr, lse_ptr, grad_ptr, dh_ptr, dw_ptr, k, D, V,
                     stride_h, stride_w, inv_temp, HAS_DW: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One (row tile, vocab tile): recompute z, dz = g (onehot - softmax) / T, atomically add into dH (and dW)."""
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
    g = tl.load(grad_ptr + rows, mask=row_mask, other=0.0) * inv_temp  # [BM] (0 on padding rows)
    cols = n * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
    col_mask = cols < V

    z = _logits_tile(h_ptr, w_ptr, src, cols, row_mask, col_mask, D, stride_h, stride_w,
                     BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION) * inv_temp  # fmt: skip  # [BM, BV]
    prob = tl.where(col_mask[None, :], tl.exp(z - lse[:, None]), 0.0)  # [BM, BV]
    dz = g[:, None] * (tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0) - prob)  # [BM, BV] fp32
    if not UPCAST:
        # Tensor-core operands in the input dtype (as torch's own backward); fp32 stays fp32.
        dz = dz.to(w_ptr.dtype.element_ty)

    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d_mask = (d0 + offs_d) < D
        w = tl.load(w_ptr + cols[:, None] * stride_w + (d0 + offs_d)[None, :],
                    mask=col_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip  # [BV, BD]
        if UPCAST:
            w = w.to(tl.float32)
        dh = tl.dot(dz, w, input_precision=PRECISION)  # [BM, BD]
        tl.atomic_add(dh_ptr + src[:, None] * D + (d0 + offs_d)[None, :], dh,
                      mask=row_mask[:, None] & d_mask[None, :], sem="relaxed")  # fmt: skip
        if HAS_DW:
            h = tl.load(h_ptr + src[:, None] * stride_h + (d0 + offs_d)[None, :],
                        mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip  # [BM, BD]
            if UPCAST:
                h = h.to(tl.float32)
            dw = tl.dot(tl.trans(dz), h, input_precision=PRECISION)  # [BV, BD]
            tl.atomic_add(dw_ptr + cols[:, None] * D + (d0 + offs_d)[None, :], dw,
                          mask=col_mask[:, None] & d_mask[None, :], sem="relaxed")  # fmt: skip


def _dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PRECISION): fp32 needs IEEE dots to match torch (TF32 would not); the interpreter needs fp32."""
    upcast = INTERPRET and dtype != torch.float32
    precision = "ieee" if (dtype == torch.float32 or upcast) else "tf32"
    return upcast, precision


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: still a few splits (up to 8), so the split merge is exercised on CPU too


def _plan_splits(k: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(n_splits, split_v): about 8 programs per SM at BLOCK_M=128, never a split narrower than 256 columns."""
    row_tiles = max(1, triton.cdiv(k, 128))
    wanted = max(1, triton.cdiv(8 * _sm_count(device), row_tiles))
    split_v = triton.cdiv(triton.cdiv(vocab, min(wanted, triton.cdiv(vocab, _SPLIT_ALIGN))), _SPLIT_ALIGN)
    split_v *= _SPLIT_ALIGN
    return triton.cdiv(vocab, split_v), split_v


def _forward(hidden, weight, targets, index, opts: _Options) -> tuple[torch.Tensor, torch.Tensor]:
    k, (vocab, dim) = index.numel(), weight.shape
    stats = torch.empty(3, opts.n_splits, k, dtype=torch.float32, device=hidden.device)  # [3, S, k] workspace
    logp = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    lse = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    upcast, precision = _dot_flags(hidden.dtype)
    grid = lambda meta: (triton.cdiv(k, meta["BLOCK_M"]) * opts.n_splits,)
    _lse_split_kernel[grid](
        hidden, weight, index, targets, stats, k, dim, vocab, hidden.stride(0), weight.stride(0),
        1.0 / opts.temperature, opts.split_v, UPCAST=upcast, PRECISION=precision,
    )  # fmt: skip
    block = 64 if INTERPRET else 512
    _merge_kernel[(triton.cdiv(k, block),)](stats, logp, lse, k, opts.n_splits, BLOCK=block)
    return logp, lse


def _backward(hidden, weight, targets, index, lse, grad_logp, need_dw: bool, opts: _Options):
    k, (vocab, dim) = index.numel(), weight.shape
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)  # [N, D] fp32 accumulator
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None  # [V, D]
    if k > 0:
        upcast, precision = _dot_flags(hidden.dtype)
        grid = lambda meta: (triton.cdiv(k, meta["BLOCK_M"]) * triton.cdiv(vocab, meta["BLOCK_V"]),)
        _backward_kernel[grid](
            hidden, weight, index, targets, lse, grad_logp, grad_h, grad_w if need_dw else grad_h, k, dim, vocab,
            hidden.stride(0), weight.stride(0), 1.0 / opts.temperature, HAS_DW=need_dw, UPCAST=upcast,
            PRECISION=precision,
        )  # fmt: skip
    return grad_h, grad_w


class _LinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, index, opts: _Options):
        logp, lse = _forward(hidden, weight, targets, index, opts)  # [k], [k] fp32
        ctx.save_for_backward(hidden, weight, targets, index, lse)
        ctx.opts = opts
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, targets, index, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None
        grad_logp = grad_logp.float().contiguous()  # [k]; sum() hands in a stride-0 expand
        grad_h, grad_w = _backward(hidden, weight, targets, index, lse, grad_logp, need_w, ctx.opts)
        grad_hidden = grad_h.to(hidden.dtype) if need_h else None  # [N, D]
        grad_weight = grad_w.to(weight.dtype) if need_w else None  # [V, D]
        return grad_hidden, grad_weight, None, None, None


class _EmptyLogprob(torch.autograd.Function):
    """k = 0: an empty [0] fp32 result whose backward gives zero gradients of the right shapes."""

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.shapes = (hidden.shape, hidden.dtype, weight.shape, weight.dtype)
        return torch.empty(0, dtype=torch.float32, device=hidden.device)  # [0]

    @staticmethod
    def backward(ctx, grad):
        h_shape, h_dtype, w_shape, w_dtype = ctx.shapes
        gh = torch.zeros(h_shape, dtype=h_dtype, device=grad.device) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(w_shape, dtype=w_dtype, device=grad.device) if ctx.needs_input_grad[1] else None
        return gh, gw


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(hidden[index] @ weight.T / temperature)[targets] as fp32 [k] (inputs already validated).

    Differentiable w.r.t. hidden, and w.r.t. weight when it requires grad.
    """
    if index is None:
        index = torch.arange(hidden.shape[0], device=hidden.device)  # [N]
    # Row stride is free (views of [B, L, D] work); the feature axis must be unit-stride for the tile loads.
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()  # [N, D]
    if weight.stride(1) != 1:
        weight = weight.contiguous()  # [V, D]
    index, targets = index.contiguous(), targets.contiguous()  # [k], [k]
    n_splits, split_v = _plan_splits(index.numel(), weight.shape[0], hidden.device)
    opts = _Options(float(temperature), n_splits, split_v)
    if index.numel() == 0:
        # No launch on an empty grid; the zero gradients still come from backward.
        return _EmptyLogprob.apply(hidden, weight)
    return _LinearLogprob.apply(hidden, weight, targets, index, opts)
