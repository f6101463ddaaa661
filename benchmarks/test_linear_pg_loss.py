"""Kernel suite: the clipped policy-gradient loss at k selected rows of N, from hidden states and the LM head.

Providers, each only where it can run (otherwise the case is skipped with the reason):
- naive          hidden @ W.T -> [N, V] logits, fp32 log_softmax over all of them, gather, PG epilogue:
                 what a TRL user runs today. Its cost does not depend on k. `bench_utils.naive_pg_loss`,
                 which kernel_check.py times as its naive too.
- naive_sel      gather the k selected rows first, then their [k, V] logits, fp32 log_softmax, gather:
                 the simplest way to profit from a selection (memory grows with k * V).
- trl_selective  the [N, V] logits materialised, then a selective log-softmax one sequence block at a time
                 (logsumexp + gather in fp32, log_softmax in the logits' dtype otherwise, as TRL does),
                 then the k selected rows. Also independent of k.
- chunked_torch  `tokrl_kernels.reference.linear_pg_loss`: tokrl's PyTorch twin, and the reference every
                 other provider is checked against before it is timed.
- liger          `LigerFusedLinearGRPOLoss` (CUDA, when liger-kernel is installed): rows laid out as
                 [B, T] sequences, the selection as its attention mask, loss_type "bnpo" (mean over the
                 selected tokens, which is our weights = 1/k). It computes every token, selected or not.
- cce            cut-cross-entropy's `linear_cross_entropy(impl="cce", reduction="none", filter_eps=None)` on the
                 gathered rows (logp = -loss): exact. CUDA only, when cut-cross-entropy is installed.
- cce_filtered_approx  the same with its default `filter_eps="high"`, which skips gradient entries it judges
                 negligible: approximate by design (its gradient gate is looser, see `_GRAD_TOL`).
- trl_chunked    TRL's own fused head, `trl.kernels.chunked_logprob.ChunkedLogProbFunction` on the gathered
                 rows (as TRL >= 1.16 scores only the masked rows on CUDA), chunk 32768 as in TRL's trainer.
- tokrl          `tokrl_kernels.linear_pg_loss(..., impl="triton")`, CUDA only (the Triton interpreter on
                 CPU is a correctness tool, not a speed figure); backward variant "gemm" (the default).
- tokrl_atomic   the same with the atomic backward variant (`backward_variant("atomic")`), kept to compare.
The PG epilogue of naive/naive_sel/trl_selective/cce/trl_chunked is `tokrl_kernels.reference.pg_epilogue`.

Inputs: N rows as B = 8 sequences (one GRPO group) of N / 8 tokens, one advantage per sequence, k unique
sorted random rows, weights 1/k, old log-probs offset from the true ones so that the clip is active on
both sides but no row sits near a clip boundary (bf16 rounding cannot flip a row). Head modes
(extra_info `head_grad`): "trained" (weight requires grad: `fwd_bwd` computes dH and dW, 3 matmul passes of
2*k*D*V FLOPs) and "frozen" (weight without grad, the LoRA case: dH only, 2 passes); `fwd` is the training
forward (autograd graph kept, trained head), 1 pass. TFLOP/s are effective: they count the k selected rows
and the passes the math needs (recomputation is not counted).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import pytest
import torch
from bench_utils import DEVICE, ON_CUDA, check_close, extra_info, naive_pg_loss, peak_mib, rounds, sync

import tokrl_kernels
from tokrl_kernels.reference import linear_pg_loss as chunked_pg_loss
from tokrl_kernels.reference import pg_epilogue

if ON_CUDA:  # Qwen2-1.5B's LM head, the paper's model
    HIDDEN, VOCAB, DTYPE, ROWS = 1536, 151936, torch.bfloat16, (1024, 4096, 16384)
else:  # small shapes, fp32 (bf16 matmuls on CPU are slow and not what anyone trains with)
    HIDDEN, VOCAB, DTYPE, ROWS = 128, 16001, torch.float32, (256, 1024)
FRACTIONS = (1.0, 0.25, 0.05)
_DTYPE_NAME = str(DTYPE).removeprefix("torch.")
# (mode, head_grad): the forward with a trained head, and fwd + bwd with the head trained and frozen.
MODES = (("fwd", True), ("fwd_bwd", True), ("fwd_bwd", False))
PROVIDERS = (
    "naive",
    "naive_sel",
    "trl_selective",
    "chunked_torch",
    "liger",
    "cce",
    "cce_filtered_approx",
    "trl_chunked",
    "tokrl",
    "tokrl_atomic",
)
SEQUENCES = 8  # B: one group of G = 8 completions
TOL = 3e-2 if DTYPE == torch.bfloat16 else 1e-4  # relative L2 error against the chunked reference
# CCE's default filter drops gradient entries below a threshold on purpose; its gradients get a looser gate.
_GRAD_TOL = {"cce_filtered_approx": 0.1}
TRL_CHUNK = 32768  # TRL's trainer default (_CHUNKED_LOGPROB_CHUNK_SIZE)
EPS_LOW, EPS_HIGH = 0.2, 0.2
# log(ratio) offsets: 0.05 stays inside the clip range, 0.4 lies outside it; both far from ln 0.8 and ln 1.2.
LOG_RATIO_OFFSETS = (-0.4, -0.05, 0.05, 0.4)


_PACKAGES = {  # provider -> (import name, pip name) for the peers that need their own package and CUDA
    "liger": ("liger_kernel", "liger-kernel"),
    "cce": ("cut_cross_entropy", "cut-cross-entropy"),
    "cce_filtered_approx": ("cut_cross_entropy", "cut-cross-entropy"),
    "trl_chunked": ("trl", "trl >= 1.16"),
}


def _unavailable(provider: str) -> str | None:
    """Why `provider` cannot run here, or None."""
    if provider.startswith("tokrl") and not ON_CUDA:
        return "tokrl (Triton) is timed on CUDA only; the Triton interpreter on CPU is not a speed figure"
    if provider in _PACKAGES:
        module, pip_name = _PACKAGES[provider]
        if not ON_CUDA:
            return f"{provider} is timed on CUDA only (Triton kernels)"
        if importlib.util.find_spec(module) is None:
            return f"{pip_name} is not installed"
        if provider == "trl_chunked" and importlib.util.find_spec("trl.kernels.chunked_logprob") is None:
            return "this trl has no trl.kernels.chunked_logprob (needs trl >= 1.16)"
    return None


@dataclass
class Case:
    """One input set; reference results from the chunked twin (fwd + bwd) for the correctness gate."""

    hidden: torch.Tensor  # [N, D] requires grad
    weight: torch.Tensor  # [V, D] requires grad
    targets_all: torch.Tensor  # [N] int64: the token after every row (liger reads all of them)
    adv_seq: torch.Tensor  # [B] fp32
    index: torch.Tensor  # [k] int64 sorted unique rows
    targets: torch.Tensor  # [k]
    advantages: torch.Tensor  # [k] fp32
    old_logp: torch.Tensor  # [k] fp32
    weights: torch.Tensor  # [k] fp32, 1/k
    ref_loss: torch.Tensor
    ref_logp: torch.Tensor  # [k]
    ref_grad_hidden: torch.Tensor  # [N, D]
    ref_grad_weight: torch.Tensor  # [V, D]

    @property
    def loss_scale(self) -> float:
        """sum |w * A| * (1 + eps): the size of the loss's terms, the scale its error is measured against."""
        return float((self.weights * self.advantages.abs()).sum()) * (1 + EPS_HIGH)


_CASE: dict[tuple[int, int], Case] = {}  # only the current case is kept: GPU inputs are large
_WEIGHT: list[torch.Tensor] = []  # the LM head, shared by every case


def _k(n_rows: int, fraction: float) -> int:
    return max(1, round(fraction * n_rows))


def _weight() -> torch.Tensor:
    if not _WEIGHT:
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        w = torch.randn(VOCAB, HIDDEN, generator=gen, device=DEVICE) / math.sqrt(HIDDEN)  # [V, D], logits ~ N(0, 1)
        _WEIGHT.append(w.to(DTYPE).requires_grad_())
    return _WEIGHT[0]


def _case(n_rows: int, k: int) -> Case:
    if (n_rows, k) in _CASE:
        return _CASE[(n_rows, k)]
    _CASE.clear()
    gen = torch.Generator(device=DEVICE).manual_seed(1000 * n_rows + k)
    weight = _weight()
    hidden = torch.randn(n_rows, HIDDEN, generator=gen, device=DEVICE).to(DTYPE).requires_grad_()  # [N, D]
    targets_all = torch.randint(0, VOCAB, (n_rows,), generator=gen, device=DEVICE)  # [N]
    adv_seq = torch.randn(SEQUENCES, generator=gen, device=DEVICE)  # [B]
    index = torch.randperm(n_rows, generator=gen, device=DEVICE)[:k].sort().values  # [k]
    targets = targets_all[index]  # [k]
    advantages = adv_seq[index // (n_rows // SEQUENCES)]  # [k]
    weights = torch.full((k,), 1.0 / k, device=DEVICE)  # [k]
    with torch.no_grad():
        true_logp = chunked_pg_loss(hidden, weight, targets, advantages, index).logp  # [k]
    pick = torch.randint(0, len(LOG_RATIO_OFFSETS), (k,), generator=gen, device=DEVICE)  # [k]
    old_logp = true_logp - torch.tensor(LOG_RATIO_OFFSETS, device=DEVICE)[pick]  # [k]
    weight.grad = None
    out = chunked_pg_loss(
        hidden,
        weight,
        targets,
        advantages,
        index,
        old_logp=old_logp,
        weights=weights,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    out.loss.backward()
    case = Case(
        hidden,
        weight,
        targets_all,
        adv_seq,
        index,
        targets,
        advantages,
        old_logp,
        weights,
        ref_loss=out.loss.detach(),
        ref_logp=out.logp.detach(),
        ref_grad_hidden=hidden.grad,
        ref_grad_weight=weight.grad,
    )
    hidden.grad = weight.grad = None
    _CASE[(n_rows, k)] = case
    return case


def _epilogue_loss(case: Case, logp: torch.Tensor) -> torch.Tensor:
    loss_rows, _clipped = pg_epilogue(
        logp, case.advantages, case.old_logp, None, case.weights, eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=0.0
    )  # [k] fp32
    return loss_rows.sum()


def _pg_args(case: Case, weight: torch.Tensor) -> tuple[tuple, dict]:
    """The positional and keyword arguments every linear PG-loss function of the suite takes for `case`."""
    args = (case.hidden, weight, case.targets, case.advantages, case.index)
    return args, {"old_logp": case.old_logp, "weights": case.weights, "eps_low": EPS_LOW, "eps_high": EPS_HIGH}


def run_naive(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bench_utils.naive_pg_loss: the same function kernel_check.py times as naive."""
    args, kwargs = _pg_args(case, weight)
    return naive_pg_loss(*args, **kwargs)


def run_naive_sel(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = case.hidden[case.index] @ weight.T  # [k, V] in the input dtype
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, case.targets[:, None]).squeeze(1)  # [k] fp32
    return _epilogue_loss(case, logp), logp


def run_trl_selective(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = case.hidden @ weight.T  # [N, V] materialised, as the model's forward returns it
    blocks = []
    for block, tgt in zip(logits.chunk(SEQUENCES), case.targets_all.chunk(SEQUENCES), strict=True):  # [T, V], [T]
        if block.dtype in (torch.float32, torch.float64):
            picked = block.gather(1, tgt[:, None]).squeeze(1)  # [T]
            blocks.append(picked - torch.logsumexp(block, dim=-1))
        else:  # logsumexp in bf16 is unstable: log_softmax of the block in its own dtype
            blocks.append(torch.log_softmax(block, dim=-1).gather(1, tgt[:, None]).squeeze(1))
    logp = torch.cat(blocks).float()[case.index]  # [N] -> [k]
    return _epilogue_loss(case, logp), logp


def run_chunked_torch(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    args, kwargs = _pg_args(case, weight)
    out = chunked_pg_loss(*args, **kwargs)
    return out.loss, out.logp


def _tokrl_runner(variant: str):
    def run(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from tokrl_kernels.triton_logprob import backward_variant

        # The variant is read when the forward is called, so the later loss.backward() runs it too.
        args, kwargs = _pg_args(case, weight)
        with backward_variant(variant):
            out = tokrl_kernels.linear_pg_loss(*args, **kwargs, impl="triton")
        return out.loss, out.logp

    return run


def _cce_runner(filter_eps: str | None):
    def run(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from cut_cross_entropy import linear_cross_entropy

        rows = case.hidden[case.index]  # [k, D] gathered: CCE scores every row it is given
        nll = linear_cross_entropy(rows, weight, case.targets, reduction="none", filter_eps=filter_eps, impl="cce")
        logp = -nll.float()  # [k]
        return _epilogue_loss(case, logp), logp

    return run


def run_trl_chunked(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    # hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, optional outputs (none)
    out = ChunkedLogProbFunction.apply(
        case.hidden[case.index], weight, None, case.targets, 1.0, TRL_CHUNK, None, 1.0, ()
    )
    logp = out[0].float()  # [k]
    return _epilogue_loss(case, logp), logp


_LIGER: dict[str, torch.nn.Module] = {}


def run_liger(case: Case, weight: torch.Tensor) -> tuple[torch.Tensor, None]:
    if not _LIGER:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        _LIGER["loss"] = LigerFusedLinearGRPOLoss(
            beta=0.0, use_ref_model=False, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="bnpo"
        )
    n_rows = case.hidden.shape[0]
    mask = torch.zeros(n_rows, device=DEVICE)  # [N]
    mask[case.index] = 1.0
    old = torch.zeros(n_rows, device=DEVICE)  # [N]; unselected rows are masked out
    old[case.index] = case.old_logp
    out = _LIGER["loss"](
        case.hidden.view(SEQUENCES, -1, HIDDEN),
        weight,
        case.targets_all.view(SEQUENCES, -1),
        mask.view(SEQUENCES, -1),
        case.adv_seq,
        old_per_token_logps=old.view(SEQUENCES, -1),
    )  # [B, T, D] rows; returns (loss, metrics)
    return (out[0] if isinstance(out, tuple) else out), None


RUNNERS = {
    "naive": run_naive,
    "naive_sel": run_naive_sel,
    "trl_selective": run_trl_selective,
    "chunked_torch": run_chunked_torch,
    "liger": run_liger,
    "cce": _cce_runner(None),
    "cce_filtered_approx": _cce_runner("high"),
    "trl_chunked": run_trl_chunked,
    "tokrl": _tokrl_runner("gemm"),
    "tokrl_atomic": _tokrl_runner("atomic"),
}
assert set(RUNNERS) == set(PROVIDERS)


def _head(case: Case, head_grad: bool) -> torch.Tensor:
    """The LM head as the provider sees it: the trained leaf, or a frozen view of it (no grad, no graph)."""
    return case.weight if head_grad else case.weight.detach()


def _check(provider: str, case: Case, head_grad: bool) -> None:
    """Loss, log-probs and gradients of `provider` against the chunked reference; fails the benchmark."""
    case.hidden.grad = case.weight.grad = None
    loss, logp = RUNNERS[provider](case, _head(case, head_grad))
    loss.backward()
    err = abs(float(loss.detach()) - float(case.ref_loss)) / case.loss_scale
    assert err <= TOL, f"{provider}: loss error {err:.3e} (relative to sum |w*A|) > {TOL:.1e}"
    if logp is not None:
        check_close(f"{provider} logp", logp, case.ref_logp, TOL)
    grad_tol = _GRAD_TOL.get(provider, TOL)
    check_close(f"{provider} grad hidden", case.hidden.grad, case.ref_grad_hidden, grad_tol)
    if head_grad:
        check_close(f"{provider} grad weight", case.weight.grad, case.ref_grad_weight, grad_tol)
    else:
        assert case.weight.grad is None, f"{provider}: a gradient reached the frozen head"
    case.hidden.grad = case.weight.grad = None


def _head_name(head_grad: bool) -> str:
    return "trained" if head_grad else "frozen"


def _case_id(mode: str, head_grad: bool, n_rows: int, fraction: float, provider: str) -> str:
    return f"{mode}-{_head_name(head_grad)}-N{n_rows}-{round(fraction * 100)}pct-{provider}"


# The "lease" subset (`-m lease`, 16 cases): fwd + bwd with the head frozen and trained at the middle N (4096 on
# CUDA), all rows and 5% of them, for naive, naive_sel and both tokrl backwards: what a short GPU lease can afford.
LEASE_PROVIDERS = ("naive", "naive_sel", "tokrl", "tokrl_atomic")


def _param(mode: str, head_grad: bool, n_rows: int, fraction: float, provider: str):
    lease = mode == "fwd_bwd" and n_rows == ROWS[1] and fraction in (1.0, 0.05) and provider in LEASE_PROVIDERS
    case_id = _case_id(mode, head_grad, n_rows, fraction, provider)
    return pytest.param(mode, head_grad, n_rows, fraction, provider, id=case_id, marks=[pytest.mark.lease] * lease)


CASES = [
    _param(mode, head_grad, n, frac, provider)
    for n in ROWS
    for frac in FRACTIONS
    for mode, head_grad in MODES  # every mode shares one input case and its reference results
    for provider in PROVIDERS
]


@pytest.mark.parametrize(("mode", "head_grad", "n_rows", "fraction", "provider"), CASES)
def test_linear_pg_loss(benchmark, mode: str, head_grad: bool, n_rows: int, fraction: float, provider: str) -> None:
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    k = _k(n_rows, fraction)
    case = _case(n_rows, k)
    _check(provider, case, head_grad)

    run = RUNNERS[provider]
    weight = _head(case, head_grad)

    def call() -> torch.Tensor:
        loss, _logp = run(case, weight)
        if mode == "fwd_bwd":
            loss.backward()
        sync()
        return loss

    def clear_grads() -> None:
        case.hidden.grad = case.weight.grad = None

    clear_grads()
    peak, seconds = peak_mib(call)
    benchmark.group = (
        f"{mode} {_head_name(head_grad)} head N={n_rows} k={k} ({round(fraction * 100)}%) D={HIDDEN} V={VOCAB} "
        f"{_DTYPE_NAME}"
    )
    benchmark.pedantic(call, setup=clear_grads, iterations=1, **rounds(seconds))
    clear_grads()
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    passes = 1 if mode == "fwd" else (3 if head_grad else 2)
    tflops = passes * 2 * k * HIDDEN * VOCAB / median / 1e12 if median else None
    benchmark.extra_info.update(
        extra_info(
            provider=provider,
            mode=mode,
            n_rows=n_rows,
            n_selected=k,
            hidden=HIDDEN,
            vocab=VOCAB,
            dtype=DTYPE,
            peak_mem_mib=peak,
            tflops=None if tflops is None else round(tflops, 4),
        )
    )
    benchmark.extra_info["head_grad"] = head_grad
