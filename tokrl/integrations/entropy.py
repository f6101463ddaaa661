"""Log-probs of the selected tokens and, when asked, the entropy of each row's distribution, in one kernel pass.

    H_i = logsumexp(z_i) - sum_v softmax(z_i)_v * z_i,v,   z_i = map(hidden[index[i]] @ weight.T) / T   [V] fp32

`map` is the model's logit scale and soft-cap (`tokrl.models.head.LogitTransform`; identity for most models).
Both come from `tokrl_kernels.linear_logprob(..., return_entropy=True)`, differentiable: the [k, V] logits never
exist.
"""

from __future__ import annotations

import inspect

import torch

from tokrl.models.head import PLAIN_HEAD, LogitTransform

# Bound at import: once the Triton backend loads, the submodule `tokrl_kernels.linear_logprob` replaces the
# package attribute of the same name, so `tokrl_kernels.linear_logprob` would then be a module.
from tokrl_kernels import linear_logprob

if inspect.ismodule(linear_logprob):
    raise ImportError(
        "tokrl_kernels.linear_logprob is the Triton submodule, not the public function: import "
        "tokrl.integrations before the first Triton kernel call"
    )


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
    """(logp [k] fp32, entropy [k] fp32 or None), both with gradient, of rows `hidden[index]` ([N, D] -> k rows)
    under head `weight` [V, D]."""
    options = {"temperature": temperature, "impl": impl, **head.kernel_kwargs()}
    if not with_entropy:
        return linear_logprob(hidden, weight, targets, index, **options), None
    logp, entropy = linear_logprob(hidden, weight, targets, index, return_entropy=True, **options)
    return logp, entropy
