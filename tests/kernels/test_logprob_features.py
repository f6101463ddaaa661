"""`linear_logprob` beyond log-probs: the entropy output, both Triton backward variants, autocast and dtypes.

Ground truth is the float64 full-logits computation (tests/utils.py) under style.md's rule
max|fast - ref64| <= 2 * max|torch_same_dtype - ref64| + atol. On CPU "triton" runs in the interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from tests.utils import assert_close_to_ref, full_logits_entropy, full_logits_logprob
from tokrl_kernels import linear_logprob, linear_pg_loss

pytest.importorskip("triton")
from tokrl_kernels import _backward_gemm  # noqa: E402  (after the skip: needs triton)
from tokrl_kernels.triton_logprob import backward_variant  # noqa: E402

ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3}
# (impl, Triton backward variant): the twin, and both Triton backwards.
IMPL_VARIANTS = [("torch", "gemm"), ("triton", "gemm"), ("triton", "atomic")]
IMPL_IDS = ["torch", "triton-gemm", "triton-atomic"]


@dataclass(frozen=True)
class Case:
    n_rows: int
    dim: int
    vocab: int
    k: int | None  # None = index None (k = N)
    repeats: bool = False
    dtype: torch.dtype = torch.float32
    temperature: float = 1.0
    train_head: bool = True
    small_workspace: bool = False  # GEMM backward: ragged vocabulary chunks (and several row blocks when k is big)
    grads: str = "both"  # upstream into "both" outputs, "entropy" only, or "logp" only
    softcap: float | None = None
    logit_scale: float = 1.0


# (id, case, why). V = 1003 is not a multiple of any block or chunk width; D = 40 and 72 are not multiples of 16.
CASES = [
    ("repeats-temp", Case(12, 40, 1003, 20, repeats=True, temperature=0.7), "repeated rows add dH, T != 1"),
    ("k-equals-n", Case(10, 72, 1003, None), "index None (k = N), D spans two D tiles"),
    (
        "workspace-blocks",
        Case(16, 40, 1003, 20, repeats=True, small_workspace=True),
        "the GEMM backward in 4 row blocks and 4 vocabulary chunks, the last one ragged",
    ),
    (
        "frozen-entropy-only",
        Case(12, 40, 1003, 9, train_head=False, grads="entropy", small_workspace=True),
        "only the entropy feeds the loss (the log-prob gradient arrives as None); head frozen",
    ),
    ("logp-only", Case(12, 40, 1003, 9, grads="logp"), "entropy returned but unused: no entropy gradient term"),
    ("bf16", Case(12, 40, 1003, 16, repeats=True, dtype=torch.bfloat16, temperature=1.3), "bf16 operands"),
    (
        "bf16-blocks",
        Case(16, 40, 1003, 40, repeats=True, dtype=torch.bfloat16, small_workspace=True),
        "bf16 inputs through the GEMM backward's multi-row-block path (dW accumulated from a transposed operand)",
    ),
    (
        "softcap-scale",
        Case(12, 40, 1003, 20, repeats=True, temperature=0.7, softcap=3.0, logit_scale=2.0),
        "the entropy and its gradient through a partly saturated soft-cap and a scale",
    ),
    (
        "softcap-blocks-frozen",
        Case(16, 40, 1003, 20, train_head=False, small_workspace=True, softcap=2.5, grads="entropy"),
        "soft-cap slope in every row block and ragged chunk, frozen head",
    ),
    (
        "scale-bf16",
        Case(12, 40, 1003, 16, dtype=torch.bfloat16, logit_scale=0.25, softcap=1.0),
        "bf16 operands with Granite's scale and a tight cap",
    ),
]


def _inputs(case: Case):
    hidden = torch.randn(case.n_rows, case.dim).to(case.dtype)  # [N, D]
    weight = (torch.randn(case.vocab, case.dim) * (2.0 / math.sqrt(case.dim))).to(case.dtype)  # [V, D]
    if case.k is None:
        index = None
    elif case.repeats:
        index = torch.randint(0, case.n_rows, (case.k,))  # [k]
        index[-1] = index[0]
    else:
        index = torch.randperm(case.n_rows)[: case.k]  # [k]
    k = case.n_rows if index is None else index.numel()
    targets = torch.randint(0, case.vocab, (k,))  # [k]
    up_logp = torch.randn(k) if case.grads != "entropy" else None  # [k]
    up_ent = torch.randn(k) if case.grads != "logp" else None  # [k]
    return hidden, weight, targets, index, up_logp, up_ent


def _run(fn, case: Case, x, dtype=None):
    """(logp, entropy, dH, dW) of sum(up_logp * logp + up_ent * entropy), inputs cast to `dtype` if given."""
    hidden, weight, targets, index, up_logp, up_ent = x
    h = hidden.detach().to(dtype or hidden.dtype, copy=True).requires_grad_(True)
    w = weight.detach().to(dtype or weight.dtype, copy=True).requires_grad_(case.train_head)
    logp, entropy = fn(h, w, targets, index)
    total = 0.0
    if up_logp is not None:
        total = total + (up_logp.to(logp.dtype) * logp).sum()
    if up_ent is not None:
        total = total + (up_ent.to(entropy.dtype) * entropy).sum()
    total.backward()
    return logp.detach(), entropy.detach(), h.grad, w.grad


def _full_logits(case: Case):
    m = (case.temperature, case.softcap, case.logit_scale)
    return lambda h, w, t, i: (full_logits_logprob(h, w, t, i, *m), full_logits_entropy(h, w, i, *m))


@pytest.mark.parametrize(("impl", "variant"), IMPL_VARIANTS, ids=IMPL_IDS)
@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_entropy_and_gradients_match_float64(case: Case, impl: str, variant: str, monkeypatch):
    if case.small_workspace:
        monkeypatch.setattr(_backward_gemm, "WORKSPACE_BYTES", 4096)
        k = case.k or case.n_rows
        rows, chunk = _backward_gemm.plan_blocks(k, case.dim, case.vocab, 4, case.train_head, 4)
        assert chunk < case.vocab, "the case must take several vocabulary chunks"
        assert rows < k or k < 20, "a case with k >= 20 and a small workspace must take several row blocks"
    x = _inputs(case)

    def fast_fn(h, w, t, i):
        with backward_variant(variant):
            return linear_logprob(
                h,
                w,
                t,
                i,
                temperature=case.temperature,
                softcap=case.softcap,
                logit_scale=case.logit_scale,
                return_entropy=True,
                impl=impl,
            )

    fast = _run(fast_fn, case, x)
    same = _run(_full_logits(case), case, x)
    ref = _run(_full_logits(case), case, x, dtype=torch.float64)
    atol = ATOL[case.dtype]
    assert fast[0].dtype == fast[1].dtype == torch.float32
    assert (fast[0] <= 0).all() and (fast[1] >= 0).all()
    for i, name in enumerate(("logp", "entropy", "dH")):
        assert_close_to_ref(fast[i], same[i], ref[i], atol=atol, name=name)
    if case.train_head:
        assert fast[3].dtype == case.dtype
        assert_close_to_ref(fast[3], same[3], ref[3], atol=atol, name="dW")
    else:
        assert fast[3] is None


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_entropy_of_empty_selection(impl: str):
    hidden = torch.randn(4, 40, requires_grad=True)
    weight = torch.randn(1003, 40)
    empty = torch.empty(0, dtype=torch.long)
    logp, entropy = linear_logprob(hidden, weight, empty, empty, return_entropy=True, impl=impl)
    assert logp.shape == entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert hidden.grad is not None and torch.count_nonzero(hidden.grad) == 0


def test_return_entropy_must_be_bool():
    with pytest.raises(TypeError, match="return_entropy"):
        linear_logprob(torch.randn(2, 8), torch.randn(5, 8), torch.tensor([0, 1]), return_entropy="yes")


def test_public_function_not_shadowed_by_a_submodule():
    # Importing the Triton module must leave `tokrl_kernels.linear_logprob` the public function.
    import tokrl_kernels.triton_logprob  # noqa: F401

    assert callable(tokrl_kernels.linear_logprob) and callable(tokrl_kernels.linear_pg_loss)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_autocast_changes_nothing(impl: str):
    # Under autocast(bf16) both implementations compute bit for bit what they compute outside it, backward included.
    hidden = torch.randn(12, 40)
    weight = torch.randn(1003, 40) / math.sqrt(40)
    index = torch.tensor([3, 0, 3, 9, 7, 11])
    targets = torch.randint(0, 1003, (6,))
    advantages = torch.randn(6)
    old_logp = -torch.rand(6) * 7

    def run(autocast: bool):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = linear_pg_loss(h, w, targets, advantages, index, old_logp=old_logp, impl=impl)
            _, entropy = linear_logprob(h, w, targets, index, return_entropy=True, impl=impl)
            (out.loss + entropy.sum()).backward()
        return out.loss.detach(), out.logp, entropy.detach(), h.grad, w.grad

    plain, under = run(False), run(True)
    for name, a, b in zip(("loss", "logp", "entropy", "dH", "dW"), plain, under, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{name} changes under autocast"


# (hidden dtype, weight dtype): mixed operands are both upcast; the fp32 full-logits computation is "same dtype".
MIXED = [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize(("impl", "variant"), IMPL_VARIANTS, ids=IMPL_IDS)
@pytest.mark.parametrize(("h_dtype", "w_dtype"), MIXED, ids=["bf16-fp32", "fp32-bf16", "fp16-bf16"])
def test_mixed_dtypes_compute_in_fp32(impl: str, variant: str, h_dtype: torch.dtype, w_dtype: torch.dtype):
    hidden = torch.randn(10, 40).to(h_dtype)
    weight = (torch.randn(1003, 40) / math.sqrt(40)).to(w_dtype)
    index = torch.tensor([1, 4, 4, 9, 0])
    targets = torch.randint(0, 1003, (5,))
    upstream = torch.randn(5)

    def run(h_in, w_in, fn):
        h = h_in.clone().requires_grad_(True)
        w = w_in.clone().requires_grad_(True)
        logp = fn(h, w)
        logp.backward(upstream.to(logp.dtype))
        return logp.detach(), h.grad, w.grad

    with backward_variant(variant):
        fast = run(hidden, weight, lambda h, w: linear_logprob(h, w, targets, index, impl=impl))
    full = lambda h, w: full_logits_logprob(h, w, targets, index, 1.0)  # noqa: E731
    ref = run(hidden.double(), weight.double(), full)
    # The fp32 computation of the same upcast operands; gradients rounded to the inputs' dtypes as fast's are.
    same = run(hidden.float(), weight.float(), full)
    same = (same[0], same[1].to(h_dtype), same[2].to(w_dtype))
    assert fast[1].dtype == h_dtype and fast[2].dtype == w_dtype
    for i, name in enumerate(("logp", "dH", "dW")):
        assert_close_to_ref(fast[i], same[i], ref[i], atol=1e-5, name=name)
