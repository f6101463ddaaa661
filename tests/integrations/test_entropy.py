"""The no-gradient chunked entropy used until tokrl_kernels.linear_logprob returns entropy itself."""

from __future__ import annotations

import pytest
import torch

import tokrl.integrations.entropy as entropy_module
from tokrl.integrations.entropy import chunked_entropy, logprob_and_entropy


def _entropy64(hidden, weight, index, temperature):
    z = hidden.double()[index] @ weight.double().T / temperature  # [k, V] full logits, float64 ground truth
    return -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)


@pytest.mark.parametrize(
    ("n", "vocab", "dim", "k", "temperature"),
    [
        pytest.param(40, 1000, 24, 50, 0.7, id="repeated-rows-vocab-not-pow2"),  # k > n: indices repeat
        pytest.param(5, 1, 8, 3, 1.0, id="single-token-vocab"),  # entropy exactly 0
        pytest.param(7, 130, 16, 0, 1.0, id="no-rows"),
    ],
)
def test_chunked_entropy_matches_full_logits(monkeypatch, n, vocab, dim, k, temperature):
    monkeypatch.setattr(entropy_module, "_TILE_ELEMENTS", 64)  # many vocabulary tiles per row chunk
    monkeypatch.setattr(entropy_module, "_ROW_CHUNK", 16)  # several row chunks
    hidden, weight = torch.randn(n, dim, requires_grad=True), torch.randn(vocab, dim) * 2
    index = torch.randint(0, n, (k,))
    got = chunked_entropy(hidden, weight, index, temperature)
    assert got.shape == (k,) and got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got.double(), _entropy64(hidden, weight, index, temperature), rtol=0, atol=2e-5)


def test_logprob_and_entropy_keeps_the_logprob_gradient():
    hidden, weight = torch.randn(6, 16, requires_grad=True), torch.randn(50, 16)
    index, targets = torch.tensor([0, 2, 5]), torch.tensor([3, 49, 0])
    logp, entropy = logprob_and_entropy(
        hidden, weight, targets, index, temperature=1.3, impl="torch", with_entropy=True
    )
    z = hidden[index] @ weight.T / 1.3  # [k, V]
    torch.testing.assert_close(logp, z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1))
    torch.testing.assert_close(entropy, -(z.softmax(-1) * z.log_softmax(-1)).sum(-1), rtol=0, atol=1e-5)
    assert logp.requires_grad
    logp.sum().backward()
    assert hidden.grad[[1, 3, 4]].abs().max() == 0 and hidden.grad[index].abs().min() > 0
    none = logprob_and_entropy(hidden, weight, targets, index, temperature=1.0, impl="torch", with_entropy=False)
    assert none[1] is None


def test_kernel_entropy_is_used_when_the_kernel_offers_it(monkeypatch):
    """With a `linear_logprob(..., return_entropy=True)` (the kernel issue's signature), its entropy is taken."""
    calls = []

    def kernel_with_entropy(hidden, weight, targets, index=None, *, temperature=1.0, return_entropy=False, impl="auto"):
        calls.append(return_entropy)
        z = hidden[index] @ weight.T / temperature  # [k, V]
        logp = z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        return (logp, -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)) if return_entropy else logp

    monkeypatch.setattr(entropy_module, "linear_logprob", kernel_with_entropy)
    monkeypatch.setattr(entropy_module, "KERNEL_HAS_ENTROPY", True)
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(30, 8)
    _, entropy = logprob_and_entropy(
        hidden, weight, torch.tensor([1, 2]), torch.tensor([0, 3]), temperature=1.0, impl="torch", with_entropy=True
    )
    assert calls == [True] and entropy.requires_grad  # differentiable: the entropy bonus can use it
