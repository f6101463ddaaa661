"""Choosing the next token from fp32 logits, exactly as Hugging Face `generate` does with top_k off.

Sampling (HF's TemperatureLogitsWarper, then TopPLogitsWarper with min_tokens_to_keep=1, then softmax and
torch.multinomial):
    scores = logits / T                                   (skipped at T = 1, as generate does)
    sort scores ascending, c_i = cumulative softmax mass; drop the tokens with c_i <= 1 - top_p, always
    keep the most likely one (skipped at top_p = 1)
    p = softmax(scores with dropped tokens at -inf)
    token = argmax_v p_v / E_v,  E_v ~ Exp(1)            (the exponential race torch.multinomial runs for
                                                          one sample: same draws, same token, no host sync)
Greedy: token = argmax_v logits_v.

The log-prob returned with every token is log softmax(logits / T)[token], before the top-p truncation:
the quantity the loss computes for pi_theta at the same temperature (`linear_pg_loss(temperature=T)`).
Everything is on-device tensor code without host syncs, so it runs inside a captured CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """do_sample=False is greedy (temperature and top_p unused, log-probs at temperature 1)."""

    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")

    @property
    def logp_temperature(self) -> float:
        return self.temperature if self.do_sample else 1.0


def warp_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """HF's temperature then top-p warpers on fp32 logits [B, V]: scores [B, V], -inf outside the nucleus."""
    scores = logits / temperature if temperature != 1.0 else logits  # [B, V]
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)  # [B, V], [B, V]
    mass_below = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [B, V] cumulative mass, ascending
    drop_sorted = mass_below <= (1 - top_p)  # [B, V]
    drop_sorted[..., -1:] = False  # the most likely token always stays
    drop = drop_sorted.scatter(1, order, drop_sorted)  # [B, V] back in vocabulary order
    return scores.masked_fill(drop, -float("inf"))  # [B, V]


def draw(scores: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(scores) [B, V] using the global torch RNG: [B] int64.

    argmax(p / E) with E ~ Exp(1) is how torch.multinomial draws a single sample, so a seeded call picks
    the token `generate` would pick from the same probabilities (and consumes the same random numbers).
    """
    probs = scores.softmax(dim=-1)  # [B, V]
    race = torch.empty_like(probs).exponential_(1)  # [B, V]
    return (probs / race).argmax(dim=-1)  # [B]


def choose_tokens(logits: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] int64 and their log-probs [B] fp32 under softmax(logits / T) from logits [B, V]."""
    logits = logits.float()  # [B, V]
    if options.do_sample:
        tokens = draw(warp_scores(logits, options.temperature, options.top_p))  # [B]
    else:
        tokens = logits.argmax(dim=-1)  # [B]
    scaled = logits / options.logp_temperature if options.logp_temperature != 1.0 else logits  # [B, V]
    logp = scaled.log_softmax(dim=-1).gather(1, tokens[:, None])[:, 0]  # [B]
    return tokens, logp
