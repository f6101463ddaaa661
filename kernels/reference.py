"""PyTorch twins of tokrl's kernels: the CPU path and the baseline every test and benchmark compares against.

Math, per selected row i (k rows, `index[i]` picks a row of `hidden`; no index means all N rows):

    y      = hidden[index[i]] @ weight.T                          [V] fp32
    z      = map(y): s * y, then c * tanh(z / c) (softcap c), / T  [V] fp32 (`tokrl_kernels._logits`)
    logp_i = z[targets[i]] - logsumexp(z)                          fp32, <= 0
    H_i    = -sum_v p_v log p_v,  p = softmax(z)                   fp32, >= 0 (only with return_entropy)
    r      = exp(logp_i - old_i)                                   (old = logp.detach() when None, so r = 1)
    pg     = -min(r * A_i, clamp(r, 1 - eps_low, 1 + eps_high) * A_i)
    kl     = exp(ref_i - logp_i) - (ref_i - logp_i) - 1            (k3 estimator, only when beta > 0)
    loss_i = w_i * (pg + beta * kl)

Backward of logp_i (and H_i): dy = (g_i * (onehot(targets[i]) - p) - g_H_i * p * (log p + H_i)) * dz/dy with
dz/dy = s / T * (1 - tanh^2) (s / T without a soft-cap), dH[index[i]] += dy @ W, dW += dy^T @ h. The entropy
is kept as H = log S - A / S with S = sum exp(z - m) and A = sum exp(z - m) (z - m) relative to the running max
m (no cancellation against lse).

Dtype contract: every product runs in fp32 (the inputs are upcast per chunk, whatever their dtypes; hidden and
weight may differ), autocast is switched off inside the op (forward and backward), and the gradients come back
in each input's own dtype.

Memory: `linear_logprob` is an autograd.Function that walks rows in chunks of at most `_ROW_CHUNK` and the
vocabulary in chunks sized so the fp32 work buffers stay under `_WORKSPACE_BYTES`, keeps only the per-row
log-sum-exp [k] for backward and recomputes the logits there. It never holds [k, V]: extra memory beyond
the gradients is a fixed workspace, whatever k and V are.
"""

from __future__ import annotations

import torch

from tokrl_kernels._logits import LogitMap
from tokrl_kernels._pg_compose import PGLoss, compose_pg_loss
from tokrl_kernels._validation import validate_logprob_inputs

_ROW_CHUNK = 512
_WORKSPACE_BYTES = 64 * 1024 * 1024  # fp32 logits/probabilities tiles + an fp32 weight slice (+ its dW slice)


def _vocab_chunk(rows: int, hidden_dim: int, vocab: int) -> int:
    """Vocabulary slice such that fp32 [rows, slice] tiles + 2 fp32 [slice, D] slices fit the workspace."""
    per_vocab_row = 4 * (3 * rows + 2 * hidden_dim)
    return max(128, min(vocab, _WORKSPACE_BYTES // per_vocab_row))


def _row_chunks(k: int):
    for start in range(0, k, _ROW_CHUNK):
        yield start, min(start + _ROW_CHUNK, k)


def _vocab_slices(rows: int, hidden_dim: int, vocab: int):
    step = _vocab_chunk(rows, hidden_dim, vocab)
    for start in range(0, vocab, step):
        yield start, min(start + step, vocab)


def _map_products_(products: torch.Tensor, logit_map: LogitMap) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z, t) from an fp32 products tile y [c, vc], in place on it: t = tanh(s y / c) with a soft-cap, else None.

    t is returned for the backward's slope dz/dy = grad_scale * (1 - t^2); without a soft-cap z is y itself.
    """
    if not logit_map.has_softcap:
        return products.mul_(logit_map.z_scale), None
    t = products.mul_(logit_map.cap_in).tanh_()  # [c, vc]
    return t * logit_map.z_scale, t


class _ChunkedLinearLogprob(torch.autograd.Function):
    """log_softmax(map(hidden[index] @ weight.T))[targets] (and H), chunked over rows and vocabulary; recomputes."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, index, logit_map: LogitMap, with_entropy):
        with torch.autocast(hidden.device.type, enabled=False):  # "fp32 tiles" must stay fp32 under autocast
            logp, lse, entropy = _forward(hidden, weight, targets, index, logit_map, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, index, lse, entropy)
        ctx.logit_map = logit_map
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: skip its term
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, index, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w) or (grad_logp is None and grad_entropy is None):
            return None, None, None, None, None, None
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float()  # [k]
        grad_entropy = None if grad_entropy is None else grad_entropy.float()  # [k]
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = _backward(
                hidden, weight, targets, index, lse, entropy, grad_logp, grad_entropy, need_h, need_w, ctx.logit_map
            )
        grad_hidden = grad_h.to(hidden.dtype) if need_h else None
        grad_weight = grad_w.to(weight.dtype) if need_w else None
        return grad_hidden, grad_weight, None, None, None, None


def _forward(hidden, weight, targets, index, logit_map, with_entropy):
    """(logp [k], lse [k], entropy [k] or None) fp32, one sweep over the vocabulary per row chunk."""
    k, vocab, hidden_dim = index.numel(), weight.shape[0], weight.shape[1]
    logp = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    lse = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    entropy = torch.empty(k, dtype=torch.float32, device=hidden.device) if with_entropy else None  # [k]
    for r0, r1 in _row_chunks(k):
        rows = hidden.index_select(0, index[r0:r1]).float()  # [c, D] one chunk, never all k
        tgt = targets[r0:r1]  # [c]
        run_max = torch.full((r1 - r0,), float("-inf"), device=hidden.device)  # [c]
        run_sum = torch.zeros(r1 - r0, device=hidden.device)  # [c]
        run_a = torch.zeros(r1 - r0, device=hidden.device)  # [c] sum exp(z - m) (z - m)
        tgt_logit = torch.zeros(r1 - r0, device=hidden.device)  # [c]
        for v0, v1 in _vocab_slices(r1 - r0, hidden_dim, vocab):
            z = _map_products_(rows @ weight[v0:v1].float().T, logit_map)[0]  # [c, vc] fp32
            in_tile = (tgt >= v0) & (tgt < v1)  # [c]
            local = (tgt - v0).clamp(0, v1 - v0 - 1)  # [c]
            picked = z.gather(1, local[:, None]).squeeze(1)  # [c] target logit read from the fp32 tile
            tgt_logit = torch.where(in_tile, picked, tgt_logit)
            new_max = torch.maximum(run_max, z.amax(dim=1))  # [c]
            rescale = torch.exp(run_max - new_max)  # [c]
            # In place: few [c, vc] tiles alive at a time keeps the workspace bound honest.
            shifted = z.sub_(new_max[:, None])  # [c, vc]
            if with_entropy:
                e = shifted.exp()  # [c, vc]
                moved = torch.where(run_sum > 0, (run_max - new_max) * run_sum, 0.0)  # [c]; first slice: S = 0
                # e > 0 drops -inf logits (p log p -> 0); a NaN still reaches H through S.
                tile_a = torch.where(e > 0, shifted.mul_(e), 0.0).sum(1)  # [c]
                run_a = rescale * (run_a + moved) + tile_a
                run_sum = run_sum * rescale + e.sum(1)  # [c]
            else:
                run_sum = run_sum * rescale + shifted.exp_().sum(1)  # [c]
            run_max = new_max
        log_sum = torch.log(run_sum)  # [c]
        lse[r0:r1] = run_max + log_sum
        logp[r0:r1] = tgt_logit - lse[r0:r1]
        if with_entropy:
            entropy[r0:r1] = log_sum - run_a / run_sum
    # Rounding can push a certain token's logp a hair above zero (H below zero); neither can be. NaN stays NaN.
    logp.clamp_(max=0.0)
    if with_entropy:
        entropy.clamp_(min=0.0)
    return logp, lse, entropy


def _backward(hidden, weight, targets, index, lse, entropy, grad_logp, grad_entropy, need_h, need_w, logit_map):
    """(dH [N, D] fp32 or None, dW [V, D] fp32 or None): logits recomputed per (row chunk, vocab slice)."""
    k, vocab, hidden_dim = index.numel(), weight.shape[0], weight.shape[1]
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None  # [N, D]
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None  # [V, D]
    grad_logp = grad_logp.float()  # [k]
    for r0, r1 in _row_chunks(k):
        idx = index[r0:r1]  # [c]
        rows = hidden.index_select(0, idx).float()  # [c, D]
        tgt = targets[r0:r1]  # [c]
        g = grad_logp[r0:r1]  # [c]
        d_rows = torch.zeros_like(rows) if need_h else None  # [c, D]
        for v0, v1 in _vocab_slices(r1 - r0, hidden_dim, vocab):
            w_slice = weight[v0:v1].float()  # [vc, D]
            z, tanh = _map_products_(rows @ w_slice.T, logit_map)  # [c, vc], [c, vc] or None
            log_p = z.sub_(lse[r0:r1, None])  # [c, vc] in place
            if grad_entropy is None:
                dz = log_p.exp_().mul_(-g[:, None])  # [c, vc] = -g * softmax, in place
            else:
                p = log_p.exp()  # [c, vc]
                coef = log_p.add_(entropy[r0:r1, None]).mul_(grad_entropy[r0:r1, None]).add_(g[:, None])
                dz = p.mul_(coef).neg_()  # [c, vc] = -p * (g + g_H (log p + H))
            in_tile = (tgt >= v0) & (tgt < v1)  # [c]
            hit = in_tile.nonzero().squeeze(1)  # [h]
            # The +g of the one-hot is added in fp32 on the tile: no bf16 cancellation of g*(1 - p).
            dz[hit, tgt[hit] - v0] += g[hit]
            if tanh is None:
                dz *= logit_map.grad_scale  # dz/dy, now w.r.t. the products y
            else:
                dz *= tanh.square_().neg_().add_(1.0).mul_(logit_map.grad_scale)  # (s / T) (1 - t^2)
                del tanh
            if need_h:
                d_rows += dz @ w_slice  # [c, D]
            if need_w:
                grad_w[v0:v1] += dz.T @ rows  # [vc, D]
        if need_h:
            grad_h.index_add_(0, idx, d_rows)  # repeated indices add up
    return grad_h, grad_w


def chunked_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    logit_map: LogitMap,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Validated-input core of `linear_logprob`: index is an int64 [k] tensor. logp [k] fp32 (and entropy [k])."""
    logp, entropy = _ChunkedLinearLogprob.apply(hidden, weight, targets, index, logit_map, return_entropy)
    return (logp, entropy) if return_entropy else logp


def pg_epilogue(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    weights: torch.Tensor | None,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipped policy-gradient (+ beta * k3 KL) loss from log-probs; differentiable w.r.t. logp only.

    advantages, old_logp, ref_logp and weights are data: detached here as in the Triton epilogue, so neither
    implementation gives them a gradient (None), whether or not they require one.
    Works in logp's floating dtype (fp32 from the kernels; float64 for the tests' ground truth).
    Returns (loss_rows [k], clipped [k] bool); a clipped row has zero gradient.
    """
    dtype = logp.dtype
    data = lambda t: None if t is None else t.detach().to(dtype)
    adv, old_logp, ref_logp, weights = data(advantages), data(old_logp), data(ref_logp), data(weights)  # [k] each
    old = logp.detach() if old_logp is None else old_logp  # [k]
    ratio = torch.exp(logp - old)  # [k]
    clamped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [k]
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))  # [k] bool
    # min(r*A, clamp(r)*A) is the clamp branch exactly where `clipped`; that branch is constant in logp.
    pg = -torch.where(clipped, (clamped * adv).detach(), ratio * adv)  # [k]
    loss = pg
    if beta > 0.0:
        delta = ref_logp - logp  # [k]
        loss = loss + beta * (torch.exp(delta) - delta - 1.0)
    if weights is not None:
        loss = loss * weights
    return loss, clipped


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(map(hidden[index] @ weight.T))[targets] as fp32 [k] (and the entropies [k]); map in the docstring."""
    index, logit_map = validate_logprob_inputs(hidden, weight, targets, index, temperature, softcap, logit_scale)
    return chunked_linear_logprob(hidden, weight, targets, index, logit_map, return_entropy)


def linear_pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    reduction: str = "sum",
) -> PGLoss:
    """The clipped policy-gradient loss at selected rows (see the module docstring), PyTorch twin."""
    return compose_pg_loss(
        chunked_linear_logprob,
        pg_epilogue,
        hidden,
        weight,
        targets,
        advantages,
        index,
        old_logp=old_logp,
        ref_logp=ref_logp,
        weights=weights,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        temperature=temperature,
        softcap=softcap,
        logit_scale=logit_scale,
        reduction=reduction,
    )
