"""The Triton kernels at Qwen2-1.5B's LM-head shape on CUDA (skipped with "needs CUDA" elsewhere).

D = 1536, V = 151936, k = 4096 in bf16 (distinct rows, rows drawn with repeats, both backward variants, a soft-cap),
k = 6144 in bf16 (the GEMM backward in two row blocks: dW accumulated in fp32 from a transposed bf16 operand) and
k = 512 in fp32 (IEEE dots on CUDA cores are ~10x slower: a small shape keeps the run short). To fit a lease (the
whole `pytest -m gpu` under 2 minutes) every case but the first runs with each autotuned kernel pinned to one
config (`_pin_configs`): autotuning compiles every config of a ladder per kernel variant, and that is what costs
minutes; the first case keeps the real autotuner. fp32 has one config per kernel anyway (no benchmarking).
At this size the float64 full-logits truth does not fit, so the full-size check compares with the PyTorch
twin (fp32 logits, chunked) under the rule max|triton - twin| <= 2 * max|naive same dtype - twin| + atol;
a float64 check runs on a few rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils import assert_close_to_ref, full_logits_entropy, full_logits_logprob, naive_pg_loss, ref64_pg_loss
from tokrl_kernels import linear_logprob, linear_pg_loss

pytestmark = pytest.mark.gpu
D, V = 1536, 151936
ATOL = {torch.float32: 1e-4, torch.bfloat16: 2e-3}
MiB = 2**20

# (id, dtype, N rows of hidden, k selected, repeats, backward variant, head trained, softcap): why
CASES = [
    ("bf16-k4096", torch.bfloat16, 4096, 4096, False, "gemm", True, None),  # the benchmarks' target (autotuned)
    ("bf16-k4096-frozen", torch.bfloat16, 4096, 4096, False, "gemm", False, None),  # LoRA: dH only
    ("bf16-k4096-repeats", torch.bfloat16, 1024, 4096, True, "gemm", True, None),  # ~4 hits per row: index_add_
    ("bf16-k4096-atomic", torch.bfloat16, 4096, 4096, False, "atomic", True, None),  # the atomic backward
    ("bf16-k6144-two-blocks", torch.bfloat16, 6144, 6144, False, "gemm", True, None),  # rows 4096 + 2048
    ("bf16-k4096-softcap", torch.bfloat16, 4096, 4096, False, "gemm", True, 30.0),  # Gemma-2's final soft-cap
    ("fp32-k512", torch.float32, 512, 512, False, "gemm", True, None),  # IEEE dots: no TF32 drift allowed
]


@pytest.fixture
def _pin_configs(monkeypatch):
    """Each autotuned kernel limited to its ladder's first low-precision config and its ieee config."""
    from tokrl_kernels import _backward_atomic, _backward_gemm, _configs, _lse_forward

    for kernel, ladder in (
        (_lse_forward._lse_split_kernel, _configs.FORWARD),
        (_backward_gemm._dz_chunk_kernel, _configs.DZ),
        (_backward_atomic._backward_kernel, _configs.ATOMIC),
    ):
        monkeypatch.setattr(kernel, "configs", [ladder.low[0], *ladder.ieee])


def _inputs(dtype, n_rows, k, repeats):
    dev = torch.device("cuda")
    hidden = torch.randn(n_rows, D, device=dev).to(dtype)  # [N, D]
    weight = (torch.randn(V, D, device=dev) * (2.0 / math.sqrt(D))).to(dtype)  # [V, D]
    index = torch.randint(0, n_rows, (k,), device=dev) if repeats else torch.randperm(n_rows, device=dev)[:k]
    targets = torch.randint(0, V, (k,), device=dev)  # [k]
    with torch.no_grad():
        logp = linear_pg_loss(hidden, weight, targets, torch.zeros(k, device=dev), index, impl="torch").logp  # [k]
    offsets = (torch.rand(k, device=dev) - 0.5) * 1.2  # [k] ratios on both sides of both bounds
    return dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        index=index,
        advantages=torch.randn(k, device=dev),
        old_logp=logp + offsets,
        ref_logp=logp + 0.3 * torch.randn(k, device=dev),
    )


def _run(fn, x, train_head=True, softcap=None, **kw):
    """(loss, logp, dH, dW, peak bytes above the start) of one forward + backward."""
    hidden = x["hidden"].clone().requires_grad_(True)
    weight = x["weight"].clone().requires_grad_(train_head)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out = fn(
        hidden,
        weight,
        x["targets"],
        x["advantages"],
        x["index"],
        old_logp=x["old_logp"],
        ref_logp=x["ref_logp"],
        beta=0.05,
        temperature=0.9,
        softcap=softcap,
        **kw,
    )
    out[0].backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    return out[0].detach(), out[1].detach(), hidden.grad, weight.grad, peak


@pytest.mark.parametrize(
    "dtype,n_rows,k,repeats,variant,train_head,softcap", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_full_size_matches_twin(dtype, n_rows, k, repeats, variant, train_head, softcap, request):
    from tokrl_kernels import _backward_gemm
    from tokrl_kernels.triton_logprob import backward_variant

    if request.node.callspec.id != CASES[0][0]:
        request.getfixturevalue("_pin_configs")
    if k > 4096:  # the case exists for the multi-block path: make sure it takes it
        assert _backward_gemm.plan_blocks(k, D, V, 2, train_head, 2)[0] < k
    x = _inputs(dtype, n_rows, k, repeats)
    with backward_variant(variant):
        _run(linear_pg_loss, x, train_head, softcap, impl="triton")  # autotuning (and its L2 flush) happens here
        fast = _run(linear_pg_loss, x, train_head, softcap, impl="triton")
    twin = _run(linear_pg_loss, x, train_head, softcap, impl="torch")
    naive = _run(naive_pg_loss, x, train_head, softcap)
    atol = ATOL[dtype]
    assert (fast[1] <= 0).all()
    for i, name in enumerate(("loss", "logp", "dH", "dW") if train_head else ("loss", "logp", "dH")):
        scale = 1.0 if i != 0 else max(1.0, twin[0].abs().item())
        assert_close_to_ref(fast[i], naive[i], twin[i], atol=atol * scale, name=name)
    if not train_head:
        assert fast[3] is None
    # The fp32 gradient accumulators and their casts to the input dtype are outputs; anything beyond is workspace.
    cast = 0 if dtype == torch.float32 else torch.empty(0, dtype=dtype).element_size()
    grads = (4 + cast) * (n_rows * D + (V * D if train_head else 0))
    extra = fast[4] - grads
    logits_fp32 = 4 * k * V
    assert extra < 64 * MiB, f"Triton path used {extra / MiB:.0f} MiB beyond its gradients (limit 64 MiB)"
    assert naive[4] - grads > logits_fp32 // 2, "control: the naive run should hold [k, V] logits"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_few_rows_match_float64(dtype, _pin_configs):
    # Float64 full logits for 8 rows (8 x V) and the float64 gradients of the whole head.
    x = _inputs(dtype, 4096, 8, False)
    fast = _run(linear_pg_loss, x, impl="triton")
    naive = _run(naive_pg_loss, x)
    ref = ref64_pg_loss(
        x["hidden"],
        x["weight"],
        x["targets"],
        x["advantages"],
        x["index"],
        old_logp=x["old_logp"],
        ref_logp=x["ref_logp"],
        beta=0.05,
        temperature=0.9,
    )
    atol = ATOL[dtype]
    assert_close_to_ref(fast[1], naive[1], ref.logp, atol=atol, name="logp")
    assert_close_to_ref(fast[0], naive[0], ref.loss, atol=atol * max(1.0, ref.loss.abs().item()), name="loss")
    assert_close_to_ref(fast[2], naive[2], ref.grad_hidden, atol=atol, name="dH")
    assert_close_to_ref(fast[3], naive[3], ref.grad_weight, atol=atol, name="dW")


def test_entropy_few_rows_match_float64(_pin_configs):
    # bf16 at full V: logp, entropy and dH of sum(logp + entropy) on 16 rows against float64 full logits.
    dev = torch.device("cuda")
    hidden = torch.randn(64, D, device=dev).to(torch.bfloat16)  # [N, D]
    weight = (torch.randn(V, D, device=dev) * (2.0 / math.sqrt(D))).to(torch.bfloat16)  # [V, D]
    index = torch.randint(0, 64, (16,), device=dev)  # [k]
    targets = torch.randint(0, V, (16,), device=dev)  # [k]

    def run(fn, h_in, w_in):
        h = h_in.clone().requires_grad_(True)
        logp, entropy = fn(h, w_in)
        (logp.sum() + entropy.sum()).backward()
        return logp.detach(), entropy.detach(), h.grad

    full = lambda h, w: (full_logits_logprob(h, w, targets, index, 0.9), full_logits_entropy(h, w, index, 0.9))  # noqa: E731
    fast = run(lambda h, w: linear_logprob(h, w, targets, index, temperature=0.9, return_entropy=True), hidden, weight)
    same = run(full, hidden, weight)
    ref = run(full, hidden.double(), weight.double())
    for i, name in enumerate(("logp", "entropy", "dH")):
        assert_close_to_ref(fast[i], same[i], ref[i], atol=ATOL[torch.bfloat16], name=name)


@pytest.fixture
def deterministic():
    """torch's deterministic kernels for the test (index_add_ without atomics), the previous setting restored."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_autocast_changes_nothing_on_cuda(impl, _pin_configs, deterministic):
    # fp32 inputs under autocast(bf16): bit-identical to the run without it (the twin's GEMMs stay fp32). The
    # comparison runs deterministically: dH's index_add_ over repeated rows adds in atomic order on CUDA, which
    # alone made two runs without autocast differ in the last bit on an H200.
    dev = torch.device("cuda")
    hidden = torch.randn(256, D, device=dev)  # [N, D]
    weight = torch.randn(V // 8, D, device=dev) / math.sqrt(D)  # [V/8, D] smaller head: fp32 is slow
    index = torch.randint(0, 256, (128,), device=dev)  # [k]
    targets = torch.randint(0, V // 8, (128,), device=dev)  # [k]
    advantages = torch.randn(128, device=dev)  # [k]

    def run(autocast):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = linear_pg_loss(h, w, targets, advantages, index, impl=impl).loss
            loss.backward()
        return loss.detach(), h.grad, w.grad

    for name, a, b in zip(("loss", "dH", "dW"), run(False), run(True), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{name} changes under autocast"


def test_tanh_fp32_on_the_device():
    # The soft-cap's tanh with CUDA's exp (ex2.approx) instead of the interpreter's numpy exp.
    from tests.kernels.test_logit_map import check_tanh_fp32

    check_tanh_fp32("cuda", bound_ulp=4.0)
