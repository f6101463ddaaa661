"""Per-row entropy of softmax(z / T), z = map(hidden[index] @ weight.T), and the log-probs next to it.

    H_i = logsumexp(z_i) - sum_v softmax(z_i)_v * z_i,v,   z_i = map(hidden[index[i]] @ weight.T) / T   [V] fp32

`map` is the model's logit scale and soft-cap (`tokrl.models.head.LogitTransform`; identity for most models).

`logprob_and_entropy` asks `tokrl_kernels.linear_logprob(..., return_entropy=True)` for both when the installed
kernels accept that argument (differentiable entropy, one pass). Otherwise it takes the log-probs from
`linear_logprob` and computes the entropy here, WITHOUT gradient, in row x vocabulary tiles with an online
(max, sum e^z, sum e^z z) merge: the [k, V] logits never exist, the workspace is bounded by `_TILE_ELEMENTS`.
"""

from __future__ import annotations

import inspect

import torch

from tokrl.models.head import PLAIN_HEAD, LogitTransform

# Bound at import: once the Triton backend loads, the submodule `tokrl_kernels.linear_logprob` replaces the
# package attribute of the same name, so `tokrl_kernels.linear_logprob` would then be a module.
from tokrl_kernels import linear_logprob

_TILE_ELEMENTS = 1 << 22  # fp32 [rows, vocab slice] tile: 16 MiB, plus one fp32 [slice, D] weight slice
_ROW_CHUNK = 256

if inspect.ismodule(linear_logprob):
    raise ImportError(
        "tokrl_kernels.linear_logprob is the Triton submodule, not the public function: import "
        "tokrl.integrations before the first Triton kernel call"
    )
KERNEL_HAS_ENTROPY: bool = "return_entropy" in inspect.signature(linear_logprob).parameters


@torch.no_grad()
def chunked_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    head: LogitTransform = PLAIN_HEAD,
) -> torch.Tensor:
    """Entropy [k] fp32 (no gradient) of the rows `hidden[index]` ([N, D] -> [k]) under head `weight` [V, D]."""
    vocab, hidden_dim = weight.shape
    k = index.numel()
    out = torch.empty(k, dtype=torch.float32, device=hidden.device)  # [k]
    for r0 in range(0, k, _ROW_CHUNK):
        rows = hidden.index_select(0, index[r0 : r0 + _ROW_CHUNK]).float()  # [c, D]
        c = rows.shape[0]
        step = max(1, min(vocab, _TILE_ELEMENTS // max(c, hidden_dim)))
        run_max = torch.full((c,), float("-inf"), device=hidden.device)  # [c]
        run_sum = torch.zeros(c, device=hidden.device)  # [c] sum e^(z - max)
        run_dot = torch.zeros(c, device=hidden.device)  # [c] sum e^(z - max) * z
        for v0 in range(0, vocab, step):
            z = head.apply(rows @ weight[v0 : v0 + step].float().T) / temperature  # [c, vc]
            new_max = torch.maximum(run_max, z.amax(dim=1))  # [c]
            scale = torch.exp(run_max - new_max)  # [c] (0 on the first tile: exp(-inf))
            e = torch.exp(z - new_max[:, None])  # [c, vc]
            run_sum = run_sum * scale + e.sum(1)
            run_dot = run_dot * scale + (e * z).sum(1)
            run_max = new_max
        out[r0 : r0 + c] = run_max + torch.log(run_sum) - run_dot / run_sum
    return out


def logprob_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    *,
    temperature: float,
    impl: str,
    with_entropy: bool,
    head: LogitTransform = PLAIN_HEAD,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [k] fp32 with gradient, entropy [k] fp32 or None). Entropy has a gradient only from the kernel."""
    options = {"temperature": temperature, "impl": impl, **head.kernel_kwargs()}
    if not with_entropy:
        return linear_logprob(hidden, weight, targets, index, **options), None
    if KERNEL_HAS_ENTROPY:
        logp, entropy = linear_logprob(hidden, weight, targets, index, return_entropy=True, **options)
        return logp, entropy
    logp = linear_logprob(hidden, weight, targets, index, **options)
    return logp, chunked_entropy(hidden, weight, index, temperature, head)
