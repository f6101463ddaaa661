"""The map from the head's raw products to the logits every op normalises: scale, optional soft-cap, temperature.

Per element of a row's products y = hidden[index[i]] @ weight.T (fp32 accumulation):

    z = logit_scale * y                       Cohere `logit_scale` s; Granite `logits_scaling` L is s = 1 / L
    z = softcap * tanh(z / softcap)          Gemma-2 `final_logit_softcapping` c (skipped when softcap is None)
    z = z / temperature                      the sampling temperature T

    dz / dy = (s / T) * (1 - tanh^2(s y / c))          (s / T without a soft-cap)

Both implementations evaluate it with the constants folded on the host in float64 (one rounding each):
z = y * z_scale without a soft-cap; t = tanh(y * cap_in), z = t * z_scale with one; dz/dy = grad_scale * slope.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogitMap:
    """The validated options of the map (see the module docstring); the folded constants are properties."""

    temperature: float = 1.0
    softcap: float | None = None
    logit_scale: float = 1.0

    @property
    def has_softcap(self) -> bool:
        return self.softcap is not None

    @property
    def z_scale(self) -> float:
        """z = y * z_scale without a soft-cap (s / T); z = tanh(...) * z_scale with one (c / T)."""
        return (self.softcap if self.has_softcap else self.logit_scale) / self.temperature

    @property
    def cap_in(self) -> float:
        """The tanh argument's factor, s / c (1.0 without a soft-cap: unused)."""
        return self.logit_scale / self.softcap if self.has_softcap else 1.0

    @property
    def grad_scale(self) -> float:
        """dz/dy = grad_scale * (1 - t^2) with a soft-cap, grad_scale alone without one (s / T)."""
        return self.logit_scale / self.temperature
