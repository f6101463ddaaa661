"""The `naive` baseline that benchmarks/kernel_check.py and benchmarks/test_linear_pg_loss.py both time.

On the H200 (2026-11-30) the two scripts timed naive fwd+bwd at N = k = 4096 as 18.1 and 13.2 ms: kernel_check's
naive went through tests.utils.naive_pg_loss, which multiplies the fp32 [N, V] logits by logit_scale and divides
them by temperature even at 1.0, two identity ops forward and two backward. Both scripts now time
bench_utils.naive_pg_loss; these tests pin down, on CPU, which [N, V]-sized tensors one fwd+bwd of it makes.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.utils import BENCHMARKS, load_benchmark_script, naive_pg_loss

N, D, V = 16, 8, 50  # N * V = 800 matches no other tensor's size ([N, D] 128, [V, D] 400)
# Backward of logprobs[index, targets]: a zero-filled [N, V] gradient with k entries put in (op names vary
# with the torch version and with whether a dispatch mode is active).
_ZERO_AND_PUT = {"new_zeros", "zeros", "zeros_like", "zero_", "fill_", "index_put", "index_put_", "_index_put_impl_"}
_ZERO_AND_PUT |= {"_unsafe_index_put"}


class _FullSizeOps(TorchDispatchMode):
    """Records "op:dtype" of every aten op that returns an [N, V]-sized tensor (views and detach left out)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in ("detach", "alias", "view", "t", "as_strided"):
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor.numel() == N * V:
                    self.ops.append(f"{name}:{str(tensor.dtype).removeprefix('torch.')}")
        return out


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCHMARKS))  # the suite imports bench_utils as its conftest arranges
    try:
        with warnings.catch_warnings():  # the `lease` mark is registered by benchmarks/conftest.py, not loaded here
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            suite = load_benchmark_script("test_linear_pg_loss")
        yield load_benchmark_script("kernel_check"), suite
    finally:
        sys.path.remove(str(BENCHMARKS))


def _inputs(dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=gen).to(dtype)  # [N, D]
    weight = (torch.randn(V, D, generator=gen) / D**0.5).to(dtype)  # [V, D]
    index = torch.randperm(N, generator=gen)  # [k = N]
    targets = torch.randint(0, V, (N,), generator=gen)  # [k]
    advantages = torch.randn(N, generator=gen)  # [k]
    old_logp = torch.randn(N, generator=gen) - 4.0  # [k]
    return hidden, weight, index, targets, advantages, old_logp


def _trace(fn, hidden, weight, trained):
    """(forward ops, backward ops) of [N, V] size, and (loss, logp, dH, dW) of one fwd+bwd of fn(h, w)."""
    h = hidden.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(trained)
    with _FullSizeOps() as fwd:
        loss, logp = fn(h, w)
    with _FullSizeOps() as bwd:
        loss.backward()
    return fwd.ops, bwd.ops, (loss.detach(), logp.detach(), h.grad, w.grad)


def _kernel_check_naive(kernel_check, index, targets, advantages, old_logp):
    # As kernel_check.run_case's `call` passes its arguments.
    return lambda h, w: kernel_check.naive_upcast(h, w, targets, advantages, index, old_logp=old_logp)[:2]


def _suite_naive(suite, index, targets, advantages, old_logp):
    def run(h, w):
        case = suite.Case(
            h, w, targets, None, index, targets, advantages, old_logp, None, None, None, None, None
        )  # the fields run_naive reads; weights None as kernel_check passes none
        return suite.run_naive(case, w)

    return run


@pytest.mark.parametrize("trained", [False, True], ids=["frozen", "trained"])
def test_both_scripts_time_the_same_full_size_passes(scripts, trained):
    kernel_check, suite = scripts
    hidden, weight, index, targets, advantages, old_logp = _inputs()
    order = index.sort().values  # the suite's index is sorted; only its order differs
    traced = [
        _trace(_kernel_check_naive(kernel_check, index, targets, advantages, old_logp), hidden, weight, trained),
        _trace(_suite_naive(suite, order, targets, advantages, old_logp), hidden, weight, trained),
    ]
    for fwd, bwd, _ in traced:
        # bf16 logits, their fp32 copy, fp32 log-probs: no temperature or logit-scale op in between.
        assert fwd == ["mm:bfloat16", "_to_copy:float32", "_log_softmax:float32"]
        assert [op for op in bwd if op.split(":")[0] not in _ZERO_AND_PUT] == [
            "_log_softmax_backward_data:float32",
            "_to_copy:bfloat16",
        ], bwd
    assert traced[0][:2] == traced[1][:2]


def test_tests_utils_naive_makes_the_extra_passes(scripts):
    """What kernel_check timed before: the same values, two more fp32 [N, V] ops each way."""
    hidden, weight, index, targets, advantages, old_logp = _inputs()

    def old(h, w):
        return naive_pg_loss(h, w, targets, advantages, index, old_logp=old_logp)[:2]

    fwd, bwd, _ = _trace(old, hidden, weight, trained=False)
    assert [op for op in fwd if op.startswith(("mul", "div"))] == ["mul:float32", "div:float32"]
    assert sorted(op for op in bwd if op.startswith(("mul", "div"))) == ["div:float32", "mul:float32"]


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)])
def test_kernel_check_naive_computes_what_it_did(scripts, dtypes):
    """Loss, log-probs and gradients equal the tests.utils naive it replaced (same math, fewer passes)."""
    kernel_check, _suite = scripts
    hidden, weight, index, targets, advantages, old_logp = _inputs(dtypes[0])
    weight = weight.to(dtypes[1])

    def old(h, w):
        if h.dtype != w.dtype:
            h, w = h.float(), w.float()
        return naive_pg_loss(h, w, targets, advantages, index, old_logp=old_logp)[:2]

    new = _kernel_check_naive(kernel_check, index, targets, advantages, old_logp)
    got = _trace(new, hidden, weight, trained=True)[2]
    want = _trace(old, hidden, weight, trained=True)[2]
    for name, a, b in zip(("loss", "logp", "dH", "dW"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=name)
