"""Input checks shared by every implementation: each error names the argument, what was expected and what came."""

from __future__ import annotations

import math
import numbers

import torch

from tokrl_kernels._logits import LogitMap

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_REDUCTIONS = ("sum", "mean", "none")


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _require_real(name: str, value: object, expected: str) -> float:
    """A Python or NumPy real number (not a bool, a string or a tensor), returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    return float(value)


def _check_positive(name: str, value: object, expected: str = "a finite float > 0") -> float:
    number = _require_real(name, value, expected)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return number


def validate_logit_map(temperature: object, softcap: object, logit_scale: object) -> LogitMap:
    """The logit map's options checked (each > 0 and finite; softcap may be None) and bundled."""
    temperature = _check_positive("temperature", temperature)
    cap = None if softcap is None else _check_positive("softcap", softcap, "None or a finite float > 0")
    return LogitMap(temperature, cap, _check_positive("logit_scale", logit_scale))


def _check_index_like(name: str, t: torch.Tensor, length: int | None, upper: int, upper_name: str) -> torch.Tensor:
    """An integer vector with values in [0, upper); returned as int64."""
    if t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D integer tensor, got {_describe(t)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer dtype (int64), got {t.dtype}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name}: expected {length} entries (one per selected row), got {t.numel()}")
    if t.numel() > 0:
        # One host sync per call: the price of an IndexError instead of a silent out-of-bounds read in a kernel.
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name}: values must lie in [0, {upper}) ({upper_name}), got {bad}")
    return t.long()


def _check_row_vector(name: str, t: torch.Tensor | None, k: int, device: torch.device) -> None:
    if t is None:
        return
    _require_tensor(name, t)
    if t.ndim != 1 or t.numel() != k:
        raise ValueError(f"{name}: expected shape ({k},) aligned with the selected rows, got {_describe(t)}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")


def validate_logprob_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None,
    temperature: object,
    softcap: object = None,
    logit_scale: object = 1.0,
) -> tuple[torch.Tensor, LogitMap]:
    """Checks the log-prob arguments; returns the int64 row index [k] (all rows when `index` is None) and the map."""
    _require_tensor("hidden", hidden)
    _require_tensor("weight", weight)
    _require_tensor("targets", targets)
    if hidden.ndim != 2:
        raise ValueError(f"hidden: expected a 2-D tensor [N, D], got {_describe(hidden)}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D tensor [V, D] (the LM head), got {_describe(weight)}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"hidden: expected float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.dtype not in _FLOAT_DTYPES:
        # A dtype of its own may differ from hidden's (both are then upcast to fp32): see the dtype contract.
        raise TypeError(f"weight: expected float32, bfloat16 or float16 (hidden is {hidden.dtype}), got {weight.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight: expected hidden size D={hidden.shape[1]} (from hidden), got {weight.shape[1]}")
    if weight.device != hidden.device:
        raise ValueError(f"weight: expected device {hidden.device} (from hidden), got {weight.device}")
    logit_map = validate_logit_map(temperature, softcap, logit_scale)
    n_rows = hidden.shape[0]
    if index is None:
        index = torch.arange(n_rows, device=hidden.device)
    else:
        _require_tensor("index", index)
        if index.device != hidden.device:
            raise ValueError(f"index: expected device {hidden.device}, got {index.device}")
        index = _check_index_like("index", index, None, n_rows, "rows of hidden")
    if targets.device != hidden.device:
        raise ValueError(f"targets: expected device {hidden.device}, got {targets.device}")
    _check_index_like("targets", targets, index.numel(), weight.shape[0], "the vocabulary size V")
    return index, logit_map


def validate_pg_inputs(
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    weights: torch.Tensor | None,
    *,
    k: int,
    device: torch.device,
    eps_low: float,
    eps_high: float,
    beta: float,
    reduction: str,
) -> None:
    """Checks the policy-gradient arguments of `linear_pg_loss` (after `validate_logprob_inputs`)."""
    _require_tensor("advantages", advantages)
    for name, t in (("advantages", advantages), ("old_logp", old_logp), ("ref_logp", ref_logp), ("weights", weights)):
        _check_row_vector(name, t, k, device)
    for name, value in (("eps_low", eps_low), ("eps_high", eps_high), ("beta", beta)):
        number = _require_real(name, value, "a finite float >= 0")
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"{name}: expected a finite float >= 0, got {value}")
    if eps_low >= 1:
        raise ValueError(f"eps_low: expected a value in [0, 1) so that 1 - eps_low > 0, got {eps_low}")
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp: required when beta > 0 (the KL term needs the reference log-probs), got None")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")
