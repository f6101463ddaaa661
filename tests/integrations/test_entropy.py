"""logprob_and_entropy: the kernel's log-probs and entropy of the selected rows, both with gradient."""

from __future__ import annotations

import torch

from tokrl.integrations.entropy import logprob_and_entropy


def test_logprob_and_entropy_keeps_the_logprob_gradient():
    hidden, weight = torch.randn(6, 16, requires_grad=True), torch.randn(50, 16)
    index, targets = torch.tensor([0, 2, 5]), torch.tensor([3, 49, 0])
    logp, entropy = logprob_and_entropy(
        hidden, weight, targets, index, temperature=1.3, impl="torch", with_entropy=True
    )
    z = hidden[index] @ weight.T / 1.3  # [k, V]
    torch.testing.assert_close(logp, z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1))
    torch.testing.assert_close(entropy, -(z.softmax(-1) * z.log_softmax(-1)).sum(-1), rtol=0, atol=1e-5)
    assert logp.requires_grad and entropy.requires_grad  # differentiable: TRL's entropy bonus can use it
    logp.sum().backward()
    assert hidden.grad[[1, 3, 4]].abs().max() == 0 and hidden.grad[index].abs().min() > 0
    none = logprob_and_entropy(hidden, weight, targets, index, temperature=1.0, impl="torch", with_entropy=False)
    assert none[1] is None
