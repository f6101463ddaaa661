"""Shared test helpers: the float64 full-logits ground truth and the tolerance rule of style.md.

The ground truth materialises all logits in float64 (fine at test shapes) and reuses the one PyTorch twin
of the PG epilogue (`tokrl_kernels.reference.pg_epilogue`, which runs in logp's dtype), so no second copy
of the loss math lives in the tests. The epilogue itself is pinned by hand-computed cases.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from tokrl_kernels.reference import pg_epilogue


class Ref64(NamedTuple):
    loss: torch.Tensor  # scalar or [k], float64
    logp: torch.Tensor  # [k] float64
    clipped: torch.Tensor  # [k] bool
    grad_hidden: torch.Tensor  # [N, D] float64
    grad_weight: torch.Tensor  # [V, D] float64


def full_logits(
    rows: torch.Tensor, weight: torch.Tensor, temperature: float, softcap: float | None = None, logit_scale: float = 1.0
) -> torch.Tensor:
    """[k, V] logits as the models define them: s * (rows @ W.T), then c * tanh(z / c) with a soft-cap c, then / T.

    fp32 from bf16/fp16/fp32 inputs (the product in the inputs' dtype, as the models' LM head computes it), float64
    from float64 inputs.
    """
    logits = rows @ weight.T  # [k, V]
    logits = logits.float() if rows.dtype != torch.float64 else logits
    logits = logits * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


def full_logits_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None,
    temperature: float,
    softcap: float | None = None,
    logit_scale: float = 1.0,
) -> torch.Tensor:
    """log_softmax over full [k, V] logits, in the dtype of the inputs (upcast the inputs for float64)."""
    rows = hidden if index is None else hidden[index]  # [k, D]
    logits = full_logits(rows, weight, temperature, softcap, logit_scale)  # [k, V]
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # [k]


def naive_pg_loss(
    hidden,
    weight,
    targets,
    advantages,
    index=None,
    *,
    old_logp=None,
    ref_logp=None,
    weights=None,
    eps_low=0.2,
    eps_high=0.2,
    beta=0.0,
    temperature=1.0,
    softcap=None,
    logit_scale=1.0,
    reduction="sum",
):
    """The full-logits computation in the inputs' own dtype: the 'torch same dtype' term of the tolerance rule."""
    logp = full_logits_logprob(hidden, weight, targets, index, temperature, softcap, logit_scale)  # [k]
    rows, clipped = pg_epilogue(
        logp,
        advantages,
        old_logp,
        ref_logp if beta > 0 else None,
        weights,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
    )
    loss = {"sum": rows.sum(), "mean": rows.sum() / max(rows.numel(), 1), "none": rows}[reduction]
    return loss, logp, clipped


def ref64_pg_loss(
    hidden,
    weight,
    targets,
    advantages,
    index=None,
    *,
    old_logp=None,
    ref_logp=None,
    weights=None,
    eps_low=0.2,
    eps_high=0.2,
    beta=0.0,
    temperature=1.0,
    softcap=None,
    logit_scale=1.0,
    reduction="sum",
    grad_out=None,
) -> Ref64:
    """Float64 full-logits loss, log-probs, clip mask and the gradients of sum(grad_out * loss)."""
    h = hidden.detach().double().requires_grad_(True)  # [N, D]
    w = weight.detach().double().requires_grad_(True)  # [V, D]
    as64 = lambda t: None if t is None else t.detach().double()
    loss, logp, clipped = naive_pg_loss(
        h,
        w,
        targets,
        as64(advantages),
        index,
        old_logp=as64(old_logp),
        ref_logp=as64(ref_logp),
        weights=as64(weights),
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        temperature=temperature,
        softcap=softcap,
        logit_scale=logit_scale,
        reduction=reduction,
    )
    upstream = torch.ones_like(loss) if grad_out is None else grad_out.double()
    gh, gw = torch.autograd.grad(loss, (h, w), upstream, allow_unused=True)
    gh = torch.zeros_like(h) if gh is None else gh
    gw = torch.zeros_like(w) if gw is None else gw
    return Ref64(loss.detach(), logp.detach(), clipped, gh, gw)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_to_ref(
    fast: torch.Tensor, same_dtype: torch.Tensor, ref64: torch.Tensor, *, atol: float, name: str = "value"
) -> None:
    """style.md's rule: max|fast - ref64| <= 2 * max|torch_same_dtype - ref64| + atol."""
    assert fast.shape == ref64.shape, f"{name}: shape {tuple(fast.shape)} != reference {tuple(ref64.shape)}"
    err = max_abs_err(fast, ref64)
    budget = 2 * max_abs_err(same_dtype, ref64) + atol
    assert err <= budget, f"{name}: max abs error {err:.3e} exceeds 2 * torch-same-dtype error + atol = {budget:.3e}"


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (a script folder, not a package) as a module for testing."""
    spec = importlib.util.spec_from_file_location(f"tokrl_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(module)
    return module


def full_logits_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor | None,
    temperature: float,
    softcap: float | None = None,
    logit_scale: float = 1.0,
) -> torch.Tensor:
    """-sum_v p_v log p_v of softmax(full_logits(hidden[index], ...)) over full [k, V] logits (entr(0) = 0), [k]."""
    rows = hidden if index is None else hidden[index]  # [k, D]
    logits = full_logits(rows, weight, temperature, softcap, logit_scale)  # [k, V]
    return torch.special.entr(torch.softmax(logits, dim=-1)).sum(-1)  # [k]
