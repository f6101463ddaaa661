"""The Triton modules on their own: the PG epilogue kernel, no [k, V] tensor anywhere, every output written.

On CPU these run through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.utils import assert_close_to_ref, naive_pg_loss
from tokrl_kernels import linear_pg_loss, reference

pytest.importorskip("triton")
from tokrl_kernels import _backward_gemm  # noqa: E402  (after the skip: needs triton)
from tokrl_kernels.pg_loss import pg_epilogue  # noqa: E402
from tokrl_kernels.triton_logprob import _backward, backward_variant  # noqa: E402


def _epilogue_inputs(k: int, *, old: bool, ref: bool, weights: bool) -> dict:
    logp = -torch.rand(k, dtype=torch.float64) * 5  # [k]
    # Offsets in (-0.6, 0.6) put ratios on both sides of both bounds; advantages of both signs and some zeros.
    offsets = (torch.rand(k, dtype=torch.float64) - 0.5) * 1.2  # [k]
    advantages = torch.randn(k, dtype=torch.float64)  # [k]
    advantages[::7] = 0.0
    return dict(
        logp=logp,
        advantages=advantages,
        old_logp=logp + offsets if old else None,
        ref_logp=logp + 0.5 * torch.randn(k, dtype=torch.float64) if ref else None,
        weights=torch.rand(k, dtype=torch.float64) if weights else None,
    )


# (id, k, old_logp given, beta, weights given): why
EPILOGUE_CASES = [
    ("all-terms", 300, True, 0.1, True),  # crosses several interpreter blocks of 128 with a ragged tail
    ("on-policy", 50, False, 0.0, False),  # old None: r = 1, ref unused, weights 1
    ("kl-only-on-policy", 50, False, 0.2, False),  # the KL gradient alone
    ("asymmetric-eps", 129, True, 0.0, True),  # one past a block, eps_low != eps_high below
    ("single", 1, True, 0.1, False),
]


@pytest.mark.parametrize("k,old,beta,weights", [c[1:] for c in EPILOGUE_CASES], ids=[c[0] for c in EPILOGUE_CASES])
def test_epilogue_kernel_matches_reference(k, old, beta, weights):
    eps = dict(eps_low=0.2, eps_high=0.28) if k == 129 else dict(eps_low=0.2, eps_high=0.2)
    x64 = _epilogue_inputs(k, old=old, ref=beta > 0, weights=weights)
    as32 = {name: None if t is None else t.float() for name, t in x64.items()}
    upstream = torch.randn(k)  # [k]

    def run(fn, x, dtype):
        logp = x["logp"].detach().clone().requires_grad_(True)
        loss, clipped = fn(logp, x["advantages"], x["old_logp"], x["ref_logp"], x["weights"], beta=beta, **eps)
        (grad,) = torch.autograd.grad(loss, logp, upstream.to(dtype))
        return loss.detach(), clipped, grad

    loss, clipped, grad = run(pg_epilogue, as32, torch.float32)
    loss32, _, grad32 = run(reference.pg_epilogue, as32, torch.float32)
    loss64, clipped64, grad64 = run(reference.pg_epilogue, x64, torch.float64)
    assert loss.dtype == torch.float32 and clipped.dtype == torch.bool and grad.dtype == torch.float32
    assert_close_to_ref(loss, loss32, loss64, atol=1e-6, name="loss")
    assert_close_to_ref(grad, grad32, grad64, atol=1e-6, name="d loss / d logp")
    # Ratios can sit within rounding of a bound; compare `clipped` only where the float64 ratio is clear of both.
    if old:
        ratio = torch.exp(x64["logp"] - x64["old_logp"])  # [k]
        clear = ((ratio - (1 + eps["eps_high"])).abs() > 1e-5) & ((ratio - (1 - eps["eps_low"])).abs() > 1e-5)
        assert torch.equal(clipped[clear], clipped64[clear])
        if k > 100:
            assert clipped64.any() and (~clipped64).any(), "inputs must clip some rows and not others"
    else:
        assert not clipped.any()


def test_epilogue_kernel_empty():
    logp = torch.empty(0, requires_grad=True)
    loss, clipped = pg_epilogue(logp, torch.empty(0), None, None, None, eps_low=0.2, eps_high=0.2, beta=0.0)
    assert loss.shape == (0,) and clipped.shape == (0,) and clipped.dtype == torch.bool
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert grad.shape == (0,)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any aten op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("variant", ["gemm", "atomic"])
def test_triton_path_never_builds_k_by_v(variant, monkeypatch):
    # Every tensor the Triton path creates (workspace, casts, gradients, the interpreter's byte views) is seen at
    # the aten level. A [k, V] tensor of any dtype (>= 2 bytes) exceeds the limit; the fp32 inputs and gradient
    # accumulators ([N, D], [V, D]) stay under it because k > 2 D. The GEMM backward's dz workspace is bounded
    # by WORKSPACE_BYTES (64 MiB on a GPU, more than a whole [k, V] at these shapes): lowered here to a quarter
    # of the limit, the bound must hold whatever k and V are.
    n_rows, dim, vocab, k = 64, 40, 1003, 96
    hidden = torch.randn(n_rows, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) / math.sqrt(dim)).requires_grad_(True)
    index = torch.randint(0, n_rows, (k,))
    targets = torch.randint(0, vocab, (k,))
    advantages = torch.randn(k)
    limit = 2 * k * vocab  # bytes
    assert 4 * max(n_rows * dim, vocab * dim) < limit
    monkeypatch.setattr(_backward_gemm, "WORKSPACE_BYTES", limit // 4)
    with _LargestTensor() as probe, backward_variant(variant):
        linear_pg_loss(hidden, weight, targets, advantages, index, impl="triton").loss.backward()
    assert probe.largest < limit, f"the Triton path built a {probe.largest}-byte tensor (a bf16 [k, V] is {limit})"
    # Control: the same probe sees the naive full-logits computation's [k, V] tensors.
    with _LargestTensor() as control:
        naive_pg_loss(hidden, weight, targets, advantages, index)[0].backward()
    assert control.largest >= limit


def _poisoned(factory):
    """torch.empty-like factory whose floats are NaN and integers/bools are 1 (True): unwritten slots show."""

    def make(*args, **kwargs):
        t = factory(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 1)

    return make


def test_every_output_element_is_written(monkeypatch):
    # Same inputs twice, the second time with every torch.empty buffer pre-filled with NaN / 1: a kernel that
    # skipped a row, a split or a tail element would differ. k = 37 leaves ragged row tiles.
    n_rows, dim, vocab, k = 20, 40, 1003, 37
    hidden = torch.randn(n_rows, dim)
    weight = torch.randn(vocab, dim) / math.sqrt(dim)
    index = torch.randint(0, n_rows, (k,))
    targets = torch.randint(0, vocab, (k,))
    advantages = torch.randn(k)
    old_logp = -torch.rand(k) * 8

    def run():
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        out = linear_pg_loss(h, w, targets, advantages, index, old_logp=old_logp, reduction="none", impl="triton")
        out.loss.backward(torch.ones(k))
        return out.loss.detach(), out.logp, out.clipped, h.grad, w.grad

    clean = run()
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    poisoned = run()
    for name, a, b in zip(("loss", "logp", "clipped", "dH", "dW"), clean, poisoned, strict=True):
        assert torch.equal(a, b), f"{name} depends on uninitialised memory"


def test_atomic_backward_is_off_the_default_import_path():
    """The atomic backward is a benchmark provider: importing the Triton path (and tokrl) must not load it."""
    code = "import sys, tokrl, tokrl_kernels.triton_logprob; print('tokrl_kernels._backward_atomic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert _backward("atomic").__module__ == "tokrl_kernels._backward_atomic"  # still there when asked for
    assert _backward("gemm").__module__ == "tokrl_kernels._backward_gemm"
