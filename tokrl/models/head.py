"""What a model's LM head does to h @ W.T before the softmax: a logit scale and a final soft-cap.

Most causal LMs compute logits = h @ W.T. A few rescale or squash them inside their `forward`, after the head
module, so the raw head weight alone does not give their distribution:

    z = logit_scale * (h @ W.T)                       Cohere `logit_scale`, Granite 1 / `logits_scaling`
    z = softcap * tanh(z / softcap)   (if softcap)    Gemma-2 `final_logit_softcapping`
    p = softmax(z / T)

`logit_transform(model)` reads both from the model's (text) config, here and nowhere else; the trainer's loss
and reference log-probs, the warm start and the TRL integration pass `LogitTransform.kernel_kwargs()` to
`tokrl_kernels.linear_logprob` / `linear_pg_loss`. The attribute names follow TRL's `add_fused_lm_head` (so both
read a config the same way): `logit_scale`, else `output_multiplier`, else `lm_head_multiplier`, else
1 / `logits_scaling` (HyperCLOVA X multiplies by it instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokrl.models.forward import transformers_model


@dataclass(frozen=True)
class LogitTransform:
    """z = logit_scale * (h @ W.T), then softcap * tanh(z / softcap) when softcap is not None."""

    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.logit_scale == 1.0 and self.softcap is None

    def kernel_kwargs(self) -> dict[str, Any]:
        """Keywords for linear_logprob / linear_pg_loss; empty for the plain head."""
        return {} if self.is_identity else {"logit_scale": self.logit_scale, "softcap": self.softcap}

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The transform on full logits h @ W.T (for tests and references; the kernels never build them)."""
        z = logits * self.logit_scale if self.logit_scale != 1.0 else logits
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def describe(self) -> str:
        parts = [f"logit_scale={self.logit_scale:g}"] if self.logit_scale != 1.0 else []
        parts += [f"softcap={self.softcap:g}"] if self.softcap is not None else []
        return ", ".join(parts) or "none"


PLAIN_HEAD = LogitTransform()  # logits = h @ W.T


def _model_config(model: Any) -> Any:
    config = transformers_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_transform(model: Any) -> LogitTransform:
    """The logit scale and soft-cap of `model` (a transformers model, possibly inside a PeftModel)."""
    config = _model_config(model)
    scale = None
    for attribute in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(config, attribute, None)
        if scale is not None:
            break
    divisor = getattr(config, "logits_scaling", None)
    if scale is None and divisor is not None:
        scale = divisor if getattr(config, "model_type", "") == "hyperclovax" else 1.0 / divisor
    softcap = getattr(config, "final_logit_softcapping", None)
    return LogitTransform(
        logit_scale=1.0 if scale is None else float(scale), softcap=None if softcap is None else float(softcap)
    )
