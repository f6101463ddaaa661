"""Triton forward: per selected row, lse, the target log-prob and (optionally) the entropy, in one sweep.

Per row (z = map(hidden[index] @ weight.T) over the V columns, fp32; the map in `tokrl_kernels._logits`):

    lse  = logsumexp(z) = m + log S,    S = sum_j exp(z_j - m),  m = max_j z_j
    logp = z[target] - lse                                             (<= 0; a NaN stays NaN)
    H    = -sum_j p_j log p_j = log S - A / S,   A = sum_j exp(z_j - m) (z_j - m)    (<= 0)

A is kept relative to the running max (never sum p z minus lse, which cancels); when the max moves from
m to m', S' = e^(m - m') S and A' = e^(m - m') (A + (m - m') S).

Grid (`_lse_split_kernel`): 1-D over (vocabulary split s, row tile m), row tiles fastest, so the programs
running together read the same weight columns and share them through L2. Rows are read through `index`
(no gathered copy of hidden). Each program sweeps its split in [BLOCK_V] tiles, accumulating z over D chunks
in fp32, and keeps the online (m, S, target logit, A); `_merge_kernel` combines the splits per row. Splits
exist so that small k still fills the GPU: their count comes from k, V and the SM count.

Workspace: the split statistics, (3 or 4) * n_splits * k fp32 (n_splits shrinks as k grows: ~2 MiB + 16 B per
row on an H100). Nothing of size [k, V].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokrl_kernels._configs import FORWARD, INTERPRET, row_bucket
from tokrl_kernels._logits import LogitMap
from tokrl_kernels._triton_tiles import dot_flags, logits_tile, mapped_logits

# Split width is a multiple of every forward BLOCK_V, so only the last split has a ragged tile.
_SPLIT_ALIGN = max(cfg.kwargs["BLOCK_V"] for cfg in FORWARD.configs)


# Keyed on the bucketed row count (`row_bucket`), not k itself (it changes every RL step), nor SPLIT_V (it follows k).
# The tensors' dtypes join the key automatically (Triton appends them). k and the row vectors are never specialised
# (divisibility by 16, alignment of a sliced index): a new k must not compile a new kernel mid-run.
@FORWARD.autotune(key=["D", "V", "K_BUCKET", "HAS_ENTROPY", "HAS_SOFTCAP", "UPCAST"])
@triton.jit(
    do_not_specialize=["k", "K_BUCKET"], do_not_specialize_on_alignment=["k", "K_BUCKET", "index_ptr", "target_ptr"]
)
def _lse_split_kernel(
    h_ptr,
    w_ptr,
    index_ptr,
    target_ptr,
    stats_ptr,
    k,
    K_BUCKET,
    D,
    V,
    stride_h,
    stride_w,
    z_scale,
    cap_in,
    SPLIT_V,
    HAS_ENTROPY: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Per (split, row tile): running max, sum of exp, target logit (and A) of z over the split's columns."""
    pid = tl.program_id(0).to(tl.int64)
    n_row_tiles = tl.cdiv(k, BLOCK_M)
    split = pid // n_row_tiles
    rows = (pid % n_row_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < k
    src = tl.load(index_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # [BM] rows of hidden
    tgt = tl.load(target_ptr + rows, mask=row_mask, other=-1).to(tl.int64)  # [BM]

    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    run_a = tl.zeros((BLOCK_M,), dtype=tl.float32)
    tgt_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    v_start = split * SPLIT_V
    v_end = tl.minimum(v_start + SPLIT_V, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BV]
        col_mask = cols < v_end
        y = logits_tile(
            h_ptr,
            w_ptr,
            src,
            cols,
            row_mask,
            col_mask,
            D,
            stride_h,
            stride_w,
            BLOCK_M,
            BLOCK_V,
            BLOCK_D,
            UPCAST,
            PRECISION,
        )  # [BM, BV]
        z, _ = mapped_logits(y, z_scale, cap_in, HAS_SOFTCAP)  # [BM, BV]
        z = tl.where(col_mask[None, :], z, float("-inf"))
        tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        # NaN-propagating max: a NaN logit (NaN hidden, inf * 0 weight) must reach lse, as in torch.
        new_max = tl.maximum(run_max, tl.max(z, axis=1), propagate_nan=tl.PropagateNan.ALL)  # [BM]
        shifted = z - new_max[:, None]  # [BM, BV]
        e = tl.exp(shifted)  # [BM, BV]
        rescale = tl.exp(run_max - new_max)  # [BM]
        if HAS_ENTROPY:
            # e > 0 drops padding and -inf logits (p log p -> 0); a NaN still reaches H through S.
            tile_a = tl.sum(tl.where(e > 0.0, e * shifted, 0.0), axis=1)  # [BM]
            moved = tl.where(run_sum > 0.0, (run_max - new_max) * run_sum, 0.0)  # [BM]; first tile: S = 0
            run_a = rescale * (run_a + moved) + tile_a
        run_sum = run_sum * rescale + tl.sum(e, axis=1)
        run_max = new_max
    # stats is [n_stats, n_splits, k]: (max, sum of exp, target logit[, A]) per split and row.
    n_splits = tl.cdiv(V, SPLIT_V)
    out = stats_ptr + split * k + rows
    tl.store(out, run_max, mask=row_mask)
    tl.store(out + n_splits * k, run_sum, mask=row_mask)
    tl.store(out + 2 * n_splits * k, tgt_logit, mask=row_mask)
    if HAS_ENTROPY:
        tl.store(out + 3 * n_splits * k, run_a, mask=row_mask)


@triton.jit(do_not_specialize=["k", "n_splits"], do_not_specialize_on_alignment=["k", "n_splits"])
def _merge_kernel(stats_ptr, logp_ptr, lse_ptr, ent_ptr, k, n_splits, HAS_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):
    """lse = M + log S over the splits; logp = target logit (found in one split) - lse; H = log S - A / S."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = rows < k
    run_max = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK,), dtype=tl.float32)
    run_a = tl.zeros((BLOCK,), dtype=tl.float32)
    tgt_logit = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, n_splits):
        m_s = tl.load(stats_ptr + s * k + rows, mask=mask, other=0.0)
        sum_s = tl.load(stats_ptr + (n_splits + s) * k + rows, mask=mask, other=1.0)  # padding rows: log(1)
        tgt_logit += tl.load(stats_ptr + (2 * n_splits + s) * k + rows, mask=mask, other=0.0)
        new_max = tl.maximum(run_max, m_s, propagate_nan=tl.PropagateNan.ALL)
        old_scale = tl.exp(run_max - new_max)
        new_scale = tl.exp(m_s - new_max)
        if HAS_ENTROPY:
            a_s = tl.load(stats_ptr + (3 * n_splits + s) * k + rows, mask=mask, other=0.0)
            moved = tl.where(run_sum > 0.0, (run_max - new_max) * run_sum, 0.0)
            run_a = old_scale * (run_a + moved) + new_scale * (a_s + (m_s - new_max) * sum_s)
        run_sum = run_sum * old_scale + sum_s * new_scale
        run_max = new_max
    log_sum = tl.log(run_sum)
    lse = run_max + log_sum
    tl.store(lse_ptr + rows, lse, mask=mask)
    # lse >= max >= target logit in exact arithmetic; the clamp only guards rounding (log-probs are <= 0).
    # A where, not tl.minimum: minimum drops a NaN operand, and a NaN log-prob must stay NaN.
    logp = tgt_logit - lse
    tl.store(logp_ptr + rows, tl.where(logp > 0.0, 0.0, logp), mask=mask)
    if HAS_ENTROPY:
        ent = log_sum - run_a / run_sum
        tl.store(ent_ptr + rows, tl.where(ent < 0.0, 0.0, ent), mask=mask)  # H >= 0; NaN stays NaN


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: still a few splits (up to 8), so the split merge is exercised on CPU too


def plan_splits(k: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(n_splits, split_v): about 8 programs per SM at BLOCK_M=128, never a split narrower than 256 columns."""
    row_tiles = max(1, triton.cdiv(k, 128))
    wanted = max(1, triton.cdiv(8 * _sm_count(device), row_tiles))
    split_v = triton.cdiv(triton.cdiv(vocab, min(wanted, triton.cdiv(vocab, _SPLIT_ALIGN))), _SPLIT_ALIGN)
    split_v *= _SPLIT_ALIGN
    return triton.cdiv(vocab, split_v), split_v


def lse_forward(hidden, weight, targets, index, logit_map: LogitMap, with_entropy: bool):
    """(logp [k], lse [k], entropy [k] or None), all fp32, for validated, non-empty inputs."""
    k, (vocab, dim) = index.numel(), weight.shape
    n_splits, split_v = plan_splits(k, vocab, hidden.device)
    n_stats = 4 if with_entropy else 3
    stats = torch.empty(n_stats, n_splits, k, dtype=torch.float32, device=hidden.device)  # [n_stats, S, k]
    logp = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    lse = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    entropy = torch.empty(k, dtype=torch.float32, device=hidden.device) if with_entropy else None  # [k]
    upcast, precision = dot_flags(hidden.dtype, weight.dtype)
    grid = lambda meta: (triton.cdiv(k, meta["BLOCK_M"]) * n_splits,)
    _lse_split_kernel[grid](
        hidden,
        weight,
        index,
        targets,
        stats,
        k,
        row_bucket(k),
        dim,
        vocab,
        hidden.stride(0),
        weight.stride(0),
        logit_map.z_scale,
        logit_map.cap_in,
        split_v,
        HAS_ENTROPY=with_entropy,
        HAS_SOFTCAP=logit_map.has_softcap,
        UPCAST=upcast,
        PRECISION=precision,
    )
    block = 64 if INTERPRET else 512
    _merge_kernel[(triton.cdiv(k, block),)](
        stats, logp, lse, entropy if with_entropy else lse, k, n_splits, HAS_ENTROPY=with_entropy, BLOCK=block
    )
    return logp, lse, entropy
