"""linear_pg_loss / linear_logprob, both implementations, against the float64 full-logits ground truth.

Every case checks logp, the loss, `clipped`, dH and (when the head trains) dW with style.md's rule
max|fast - ref64| <= 2 * max|torch_same_dtype - ref64| + atol, where torch_same_dtype is the naive
full-logits computation in the inputs' dtype. On CPU "triton" runs through the interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from tests.utils import assert_close_to_ref, full_logits_logprob, naive_pg_loss, ref64_pg_loss
from tokrl_kernels import linear_logprob, linear_pg_loss

IMPLS = ["torch", "triton"]
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}
# Per row (cycled): the log-ratio offset old - logp, which puts r = exp(-offset) clearly above 1.2, inside,
# or below 0.8 (far enough from both bounds that rounding cannot flip `clipped`), and the advantage's sign.
# The first two rows clip on the high side (A > 0, r > 1.2) and the low side (A < 0, r < 0.8); the rest
# cover the unclipped combinations, so every case with k >= 2 clips on both sides.
_OFFSETS = torch.tensor([-0.5, 0.5, -0.1, 0.1, 0.5, -0.5, 0.1, -0.1], dtype=torch.float64)
_SIGNS = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Case:
    n_rows: int  # N, rows of hidden
    dim: int  # D
    vocab: int  # V
    k: int | None  # selected rows; None = index None (all N rows)
    repeats: bool = False  # draw index with replacement
    dtype: torch.dtype = torch.float32
    temperature: float = 1.0
    beta: float = 0.0
    weights: bool = False
    off_policy: bool = True  # old_logp given (clipping on both sides) vs None (r = 1)
    train_head: bool = True  # weight.requires_grad
    reduction: str = "sum"
    strided: bool = False  # hidden is a column slice of a wider tensor (row stride != D)
    softcap: float | None = None  # Gemma-2's final logit soft-cap
    logit_scale: float = 1.0  # Cohere's logit_scale; Granite's 1 / logits_scaling


# (id, case, why it exists). D = 40 and 72 are not multiples of 16 (and 72 spans two D tiles); V = 1003 and
# 32003 are neither powers of two nor multiples of any tile or split width.
CASES = [
    ("base-fp32", Case(24, 40, 1003, 16), "the plain case: distinct rows, sum, trained head, clipping both sides"),
    (
        "temp-kl-weights-mean",
        Case(24, 40, 1003, 16, temperature=0.7, beta=0.1, weights=True, reduction="mean"),
        "every term of the loss at once: temperature, KL, per-row weights, the mean",
    ),
    (
        "repeats-none",
        Case(6, 72, 1003, 20, repeats=True, reduction="none"),
        "repeated indices must add their dH; 'none' with a random upstream gradient tests per-row grads",
    ),
    ("index-none", Case(12, 40, 1003, None, beta=0.05), "index None selects all N rows (k = N)"),
    ("k-equals-n-permuted", Case(12, 40, 1003, 12, reduction="mean"), "k = N through a permutation, not arange"),
    ("single-row", Case(5, 40, 1003, 1), "k = 1 (Triton specialises the integer 1 as a constant)"),
    ("frozen-head", Case(16, 40, 1003, 9, train_head=False), "weight without grad: dH only, weight.grad stays None"),
    ("on-policy", Case(16, 40, 1003, 9, off_policy=False, temperature=1.5), "old_logp None: r = 1, REINFORCE"),
    ("strided-hidden", Case(16, 40, 1003, 9, strided=True), "hidden is a view with row stride != D"),
    (
        "vocab-32003",
        Case(4, 72, 32003, 3, temperature=1.3, beta=0.1),
        "a larger vocabulary: many vocab tiles and several forward splits to merge (few rows: interpreter cost)",
    ),
    (
        "bf16",
        Case(24, 40, 1003, 16, dtype=torch.bfloat16, temperature=0.7, beta=0.1, weights=True),
        "bf16 inputs (upcast dot under the interpreter) with every loss term",
    ),
    (
        "bf16-vocab-32003-frozen",
        Case(4, 72, 32003, 2, dtype=torch.bfloat16, train_head=False, repeats=True),
        "bf16 at the larger vocabulary, LoRA-style frozen head, a repeated row",
    ),
    (
        "fp16-repeats",
        Case(8, 40, 1003, 12, dtype=torch.float16, repeats=True, reduction="none"),
        "fp16 inputs with repeated indices",
    ),
    # Logits ~ N(0, 2^2) scaled by 2: a soft-cap of 3 saturates many of them (tanh' ~ 0), the rest stay linear.
    (
        "softcap-scale-kl",
        Case(24, 40, 1003, 16, temperature=0.7, beta=0.1, weights=True, softcap=3.0, logit_scale=2.0),
        "soft-cap and logit scale together, partly saturated, every loss term",
    ),
    (
        "softcap-gemma2-frozen",
        Case(12, 72, 1003, 20, repeats=True, softcap=30.0, reduction="none", train_head=False),
        "Gemma-2's cap (30) with no head gradient, repeated rows, per-row gradients",
    ),
    (
        "granite-scale",
        Case(16, 40, 1003, 9, temperature=1.3, logit_scale=0.25),
        "Granite's logits_scaling 4 as logit_scale 1/4 (a flat distribution), trained head",
    ),
    (
        "cohere-scale-frozen",
        Case(16, 40, 1003, 9, logit_scale=0.0625, train_head=False, off_policy=False),
        "Cohere's logit_scale 0.0625, frozen head, on-policy",
    ),
    (
        "softcap-vocab-32003",
        Case(4, 72, 32003, 3, softcap=2.0, logit_scale=1.5),
        "a cap below the logits' spread across several forward splits and many vocab tiles",
    ),
    (
        "softcap-bf16",
        Case(24, 40, 1003, 16, dtype=torch.bfloat16, temperature=0.7, softcap=4.0, logit_scale=0.5),
        "bf16 inputs under a soft-cap and a scale",
    ),
]


def _inputs(case: Case) -> dict:
    """Fresh random inputs; old/ref log-probs are placed relative to the float64 log-probs."""
    hidden = torch.randn(case.n_rows, case.dim).to(case.dtype)  # [N, D]
    weight = (torch.randn(case.vocab, case.dim) * (2.0 / math.sqrt(case.dim))).to(case.dtype)  # [V, D] logits ~ 2
    if case.k is None:
        index = None
    elif case.repeats:
        index = torch.randint(0, case.n_rows, (case.k,))  # [k]
        index[-1] = index[0]  # at least one repeat, whatever the draw
    else:
        index = torch.randperm(case.n_rows)[: case.k]  # [k]
    k = case.n_rows if index is None else index.numel()
    targets = torch.randint(0, case.vocab, (k,))  # [k]
    logp64 = full_logits_logprob(
        hidden.double(), weight.double(), targets, index, case.temperature, case.softcap, case.logit_scale
    )  # [k]
    cycle = torch.arange(k) % len(_OFFSETS)  # [k]
    advantages = _SIGNS[cycle] * (0.5 + torch.rand(k))  # [k] both signs
    offsets = _OFFSETS[cycle] + 0.02 * torch.rand(k, dtype=torch.float64)  # [k]
    old_logp = (logp64 + offsets).float() if case.off_policy else None  # [k]
    # ref close to logp keeps the KL term well conditioned (exp(ref - logp) near 1).
    ref_logp = (logp64 + 0.3 * torch.randn(k, dtype=torch.float64)).float() if case.beta > 0 else None  # [k]
    weights = torch.rand(k) + 0.5 if case.weights else None  # [k]
    grad_out = torch.randn(k) if case.reduction == "none" else None  # [k] upstream of the per-row loss
    return dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        index=index,
        advantages=advantages,
        old_logp=old_logp,
        ref_logp=ref_logp,
        weights=weights,
        grad_out=grad_out,
    )


def _run(fn, case: Case, x: dict):
    """fn's (loss, logp, clipped, dH, dW or None) for fresh leaf copies of hidden and weight."""
    if case.strided:
        # A leaf [N, D + 7] whose first D columns are the input: the op sees row stride D + 7.
        leaf = torch.zeros(x["hidden"].shape[0], case.dim + 7, dtype=case.dtype)
        leaf[:, : case.dim] = x["hidden"]
        leaf.requires_grad_(True)
        hidden_in = leaf[:, : case.dim]  # [N, D] view, stride (D + 7, 1)
    else:
        leaf = hidden_in = x["hidden"].detach().clone().requires_grad_(True)  # [N, D]
    weight = x["weight"].detach().clone().requires_grad_(case.train_head)
    out = fn(
        hidden_in,
        weight,
        x["targets"],
        x["advantages"],
        x["index"],
        old_logp=x["old_logp"],
        ref_logp=x["ref_logp"],
        weights=x["weights"],
        beta=case.beta,
        temperature=case.temperature,
        softcap=case.softcap,
        logit_scale=case.logit_scale,
        reduction=case.reduction,
    )
    loss, logp, clipped = out[0], out[1], out[2]
    loss.backward(x["grad_out"] if case.reduction == "none" else None)
    if case.strided:
        assert torch.count_nonzero(leaf.grad[:, case.dim :]) == 0, "gradient leaked into the padding columns"
    return loss.detach(), logp.detach(), clipped, leaf.grad[:, : case.dim], weight.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_float64(case: Case, impl: str):
    x = _inputs(case)
    fast = _run(lambda *a, **kw: linear_pg_loss(*a, **kw, impl=impl), case, x)
    same = _run(naive_pg_loss, case, x)
    ref = ref64_pg_loss(
        x["hidden"],
        x["weight"],
        x["targets"],
        x["advantages"],
        x["index"],
        old_logp=x["old_logp"],
        ref_logp=x["ref_logp"],
        weights=x["weights"],
        beta=case.beta,
        temperature=case.temperature,
        softcap=case.softcap,
        logit_scale=case.logit_scale,
        reduction=case.reduction,
        grad_out=x["grad_out"],
    )
    atol = ATOL[case.dtype]
    loss, logp, clipped, grad_h, grad_w = fast
    assert logp.dtype == torch.float32 and loss.dtype == torch.float32
    assert (logp <= 0).all(), "a log-probability above 0"
    assert_close_to_ref(logp, same[1], ref.logp, atol=atol, name="logp")
    loss_scale = max(1.0, ref.loss.abs().max().item())
    assert_close_to_ref(loss, same[0], ref.loss, atol=atol * loss_scale, name="loss")
    assert torch.equal(clipped, ref.clipped), "clipped differs from the float64 ground truth"
    if case.off_policy and logp.numel() >= 2:
        adv = x["advantages"]
        assert (ref.clipped & (adv > 0)).any() and (ref.clipped & (adv < 0)).any(), "case must clip on both sides"
    assert grad_h.dtype == case.dtype
    assert_close_to_ref(grad_h, same[3], ref.grad_hidden, atol=atol, name="dH")
    if case.train_head:
        assert grad_w.dtype == case.dtype
        assert_close_to_ref(grad_w, same[4], ref.grad_weight, atol=atol, name="dW")
    else:
        assert grad_w is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("softcap,logit_scale", [(None, 1.0), (30.0, 0.5)], ids=["plain", "softcap-scale"])
def test_empty_selection(impl: str, reduction: str, softcap, logit_scale):
    # k = 0: empty logp/clipped, a zero loss (or an empty one), zero gradients of the right shapes, no launch.
    hidden = torch.randn(5, 40, requires_grad=True)
    weight = torch.randn(1003, 40, requires_grad=True)
    empty = torch.empty(0, dtype=torch.long)
    out = linear_pg_loss(
        hidden,
        weight,
        empty,
        torch.empty(0),
        empty,
        reduction=reduction,
        softcap=softcap,
        logit_scale=logit_scale,
        impl=impl,
    )
    assert out.logp.shape == (0,) and out.clipped.shape == (0,) and out.clipped.dtype == torch.bool
    assert out.loss.shape == ((0,) if reduction == "none" else ())
    out.loss.sum().backward()
    assert hidden.grad is not None and torch.count_nonzero(hidden.grad) == 0
    assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_logprob_alone(impl: str):
    # The log-prob op on its own (as the trainer uses it for old/ref log-probs): values and gradients.
    hidden = torch.randn(10, 40)
    weight = torch.randn(1003, 40) / math.sqrt(40)
    index = torch.tensor([3, 0, 3, 9, 7])  # a repeat
    targets = torch.randint(0, 1003, (5,))
    upstream = torch.randn(5)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    logp = linear_logprob(h, w, targets, index, temperature=0.9, impl=impl)
    logp.backward(upstream)
    h64 = hidden.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    ref = full_logits_logprob(h64, w64, targets, index, 0.9)
    ref.backward(upstream.double())
    torch.testing.assert_close(logp, ref.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.grad, h64.grad.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, w64.grad.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_data_inputs_get_no_gradient(impl: str):
    # Both implementations treat advantages, old_logp, ref_logp and weights as data: even when they require grad
    # they get None, and the gradients of hidden and weight are those of the detached inputs.
    x = _inputs(Case(12, 40, 1003, 8, beta=0.1, weights=True))
    data = {name: x[name].clone().requires_grad_(True) for name in ("advantages", "old_logp", "ref_logp", "weights")}
    hidden = x["hidden"].clone().requires_grad_(True)
    weight = x["weight"].clone().requires_grad_(True)
    loss = linear_pg_loss(
        hidden,
        weight,
        x["targets"],
        data["advantages"],
        x["index"],
        old_logp=data["old_logp"],
        ref_logp=data["ref_logp"],
        weights=data["weights"],
        beta=0.1,
        impl=impl,
    ).loss
    loss.backward()
    for name, t in data.items():
        assert t.grad is None, f"{name} got a gradient from impl={impl}; the documented contract is none"
    detached = _run(lambda *a, **kw: linear_pg_loss(*a, **kw, impl=impl), Case(12, 40, 1003, 8, beta=0.1), x)
    assert torch.equal(hidden.grad, detached[3]) and torch.equal(weight.grad, detached[4])
    assert torch.equal(loss.detach(), detached[0])
