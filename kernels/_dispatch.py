"""Which implementation runs: impl="auto" | "triton" | "torch", overridable by env TOKRL_KERNEL_IMPL.

"auto" picks Triton when the tensors live on CUDA (or when TRITON_INTERPRET=1, which runs Triton kernels
on CPU tensors) and triton imports; otherwise the PyTorch twin. Triton is imported lazily, the first time
a Triton kernel is needed, so `import tokrl_kernels` costs only torch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import NamedTuple

import torch

from tokrl_kernels import reference
from tokrl_kernels._pg_compose import EpilogueFn, LogprobFn

IMPLS = ("auto", "triton", "torch")
ENV_VAR = "TOKRL_KERNEL_IMPL"


class Backend(NamedTuple):
    name: str
    logprob: LogprobFn
    epilogue: EpilogueFn


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ("triton" or "torch") for `impl` on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl == "auto":
        override = os.environ.get(ENV_VAR, "").strip()
        if override:
            if override not in IMPLS:
                raise ValueError(f"{ENV_VAR}: expected one of {', '.join(map(repr, IMPLS))}, got {override!r}")
            impl = override
    if impl == "auto":
        runs_triton = device.type == "cuda" or _interpreting()
        return "triton" if runs_triton and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton': the triton package is not installed (pip install triton)")
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"impl='triton': tensors are on {device}, and Triton runs on CUDA devices only; set "
                "TRITON_INTERPRET=1 before triton is imported to run the kernels on CPU (slow), or use impl='torch'"
            )
    return impl


def _triton_logprob(hidden, weight, targets, index, logit_map, return_entropy=False):
    from tokrl_kernels.triton_logprob import linear_logprob

    return linear_logprob(hidden, weight, targets, index, logit_map, return_entropy=return_entropy)


def _triton_epilogue(*args, **kwargs):
    from tokrl_kernels.pg_loss import pg_epilogue

    return pg_epilogue(*args, **kwargs)


_BACKENDS = {
    "torch": Backend("torch", reference.chunked_linear_logprob, reference.pg_epilogue),
    "triton": Backend("triton", _triton_logprob, _triton_epilogue),
}


def get_backend(impl: str, device: torch.device) -> Backend:
    return _BACKENDS[resolve_impl(impl, device)]
