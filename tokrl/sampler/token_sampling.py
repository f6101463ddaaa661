"""Choosing the next token from fp32 logits, from the distribution Hugging Face `generate` samples with top_k off.

Sampling (HF's TemperatureLogitsWarper, then TopPLogitsWarper with min_tokens_to_keep=1, then softmax and one
draw per row):
    scores = logits / T                                   (skipped at T = 1, as generate does)
    sort scores ascending, c_i = cumulative softmax mass; drop the tokens with c_i <= 1 - top_p, always
    keep the most likely one (skipped at top_p = 1)
    p = softmax(scores with dropped tokens at -inf)
    token = min { v : F_v > u * F_V },  F = cumsum(p) in float64,  u ~ U[0, 1) one per row
Greedy: token = argmax_v logits_v.

The draw is an inverse CDF rather than torch.multinomial's exponential race (argmax_v p_v / E_v, E_v ~ Exp(1)):
the same distribution from one random number per row instead of one per vocabulary entry. On a CPU the race's
[rows, V] exponential draws were most of the token choice (2.3 ms of ~2.6 per token at 512 rows x 264 tokens);
the price is that a seeded call no longer picks the very tokens `generate` picks (tests check the distribution
and the log-probs instead).

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


def draw(scores: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from softmax(scores) [B, V] using the global torch RNG: [B] int64 (module docstring).
    rows [B'] int64: draw B' tokens instead, row i from softmax(scores[rows[i]]) (rows that share a distribution
    share its cumulative sums; each still draws its own uniform).

    F runs in float64: in fp32 a 150k-token running sum rounds a 1e-6 probability by ~6% where F is near 1/2.
    A token of probability 0 (outside the nucleus) is never chosen: F does not rise at it, so the first index
    past the target is never one; the target is kept below F_V so that index always exists.
    """
    cdf = scores.softmax(dim=-1).double().cumsum(dim=-1)  # [B, V] (the sum in float64; fp32 softmax is ~8x cheaper)
    if rows is not None:
        cdf = cdf.index_select(0, rows)  # [B', V]
    total = cdf[:, -1:]  # [B, 1] 1 up to rounding
    u = torch.rand(total.shape, dtype=torch.float64, device=scores.device)  # [B, 1]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # [B, 1] below F_V
    return torch.searchsorted(cdf, target, right=True)[:, 0]  # [B]


def choose_tokens(
    logits: torch.Tensor, options: SamplingOptions, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] int64 and their log-probs [B] fp32 under softmax(logits / T) from logits [B, V].
    rows [B'] int64: B' tokens instead, token i from logits[rows[i]] (rows sharing a prefix share its logits)."""
    logits = logits.float()  # [B, V]
    if options.do_sample:
        tokens = draw(warp_scores(logits, options.temperature, options.top_p), rows)  # [B']
    else:
        tokens = logits.argmax(dim=-1)  # [B]
        tokens = tokens if rows is None else tokens.index_select(0, rows)  # [B']
    scaled = logits / options.logp_temperature if options.logp_temperature != 1.0 else logits  # [B, V]
    logp = scaled.log_softmax(dim=-1)  # [B, V]
    if rows is not None:
        return tokens, logp[rows, tokens]  # [B'], [B']
    return tokens, logp.gather(1, tokens[:, None])[:, 0]  # [B], [B]
