"""S-GRPO's position sampling: deterministic cases by hand, then selection statistics over many draws."""

import math

import pytest
import torch

from tokrl.algorithms import sample_positions

N_DRAWS = 4000
SIGMAS = 5.0  # a 5-sigma binomial band: a correct sampler fails it about once in 1.7 million checks


def draws(length, alpha, max_tokens, seed=0, n=N_DRAWS):
    gen = torch.Generator().manual_seed(seed)
    return [sample_positions(length, alpha, max_tokens, gen) for _ in range(n)]


def check_invariants(pos, length, alpha, max_tokens):
    assert pos.dtype == torch.int64 and pos.dim() == 1
    assert pos.numel() <= max_tokens
    assert bool((pos[1:] > pos[:-1]).all()), "sorted and unique"
    assert bool(((pos >= 0) & (pos < length)).all()), "never past the completion (no padding)"
    head = min(alpha, length, max_tokens)
    assert pos[:head].tolist() == list(range(head)), "the first alpha are always kept"


def binomial_band(p, n):
    return SIGMAS * math.sqrt(max(p * (1 - p), 1e-12) / n)


@pytest.mark.parametrize(
    ("length", "alpha", "max_tokens", "expected"),
    [
        (0, 25, 50, []),  # empty completion selects nothing
        (10, 25, 50, list(range(10))),  # shorter than alpha: all of it
        (25, 25, 50, list(range(25))),  # exactly alpha: no later positions exist
        (50, 25, 50, list(range(50))),  # p = min(1, 25 / 25) = 1 and 50 fit under the cap
        (30, 10, 4, [0, 1, 2, 3]),  # cap below alpha: the cap wins, first 4
        (30, 0, 50, []),  # alpha = 0: p = 0 / 30 = 0, nothing
    ],
)
def test_deterministic_cases(length, alpha, max_tokens, expected):
    gen = torch.Generator().manual_seed(1)
    assert sample_positions(length, alpha, max_tokens, gen).tolist() == expected


def test_later_positions_follow_p_without_the_cap():
    # L = 45, alpha = 5: p = 5 / 40 = 1/8 for each of positions 5..44; the cap (1000) never binds.
    # Expected count = 5 + 40 / 8 = 10.
    length, alpha, p = 45, 5, 1 / 8
    samples = draws(length, alpha, 1000, seed=11)
    hits = torch.zeros(length)
    for pos in samples:
        check_invariants(pos, length, alpha, 1000)
        hits[pos] += 1
    freq = hits / N_DRAWS  # [L]
    assert freq[:alpha].tolist() == [1.0] * alpha
    assert (freq[alpha:] - p).abs().max() <= binomial_band(p, N_DRAWS)
    mean_count = sum(pos.numel() for pos in samples) / N_DRAWS
    assert abs(mean_count - 10) <= SIGMAS * math.sqrt(40 * p * (1 - p) / N_DRAWS)


def test_cap_keeps_first_alpha_and_a_uniform_subset():
    # L = 24, alpha = 4, k = 8: p = 4 / 20 = 0.2, later hits X ~ Binomial(20, 0.2), kept = min(X, 4).
    # E[min(X, 4)] = sum_x min(x, 4) C(20, x) 0.2^x 0.8^(20-x); the kept subset is uniform, so each later
    # position is kept with probability E[min(X, 4)] / 20.
    length, alpha, cap, p, n_later = 24, 4, 8, 0.2, 20
    pmf = [math.comb(n_later, x) * p**x * (1 - p) ** (n_later - x) for x in range(n_later + 1)]
    kept = sum(min(x, cap - alpha) * q for x, q in enumerate(pmf))
    kept_sq = sum(min(x, cap - alpha) ** 2 * q for x, q in enumerate(pmf))
    samples = draws(length, alpha, cap, seed=12)
    hits = torch.zeros(length)
    for pos in samples:
        check_invariants(pos, length, alpha, cap)
        hits[pos] += 1
    assert max(pos.numel() for pos in samples) == cap  # the cap binds in this regime (P(X > 4) = 0.37)
    freq = hits / N_DRAWS
    q = kept / n_later
    assert (freq[alpha:] - q).abs().max() <= binomial_band(q, N_DRAWS)
    mean_count = sum(pos.numel() for pos in samples) / N_DRAWS
    assert abs(mean_count - (alpha + kept)) <= SIGMAS * math.sqrt((kept_sq - kept**2) / N_DRAWS)


def test_default_alpha_and_cap_on_a_long_completion():
    # L = 200: p = 25 / 175 = 1/7, X ~ Binomial(175, 1/7) with mean 25; the cap keeps min(X, 25) later ones.
    length, alpha, cap, p, n_later = 200, 25, 50, 1 / 7, 175
    pmf = [math.comb(n_later, x) * p**x * (1 - p) ** (n_later - x) for x in range(n_later + 1)]
    kept = sum(min(x, cap - alpha) * q for x, q in enumerate(pmf))
    samples = draws(length, alpha, cap, seed=13, n=1000)
    for pos in samples:
        check_invariants(pos, length, alpha, cap)
    mean_count = sum(pos.numel() for pos in samples) / len(samples)
    assert abs(mean_count - (alpha + kept)) < 0.5  # sd of the mean ~ 0.1


def test_generator_makes_draws_reproducible():
    a = [p.tolist() for p in draws(120, 10, 30, seed=5, n=20)]
    b = [p.tolist() for p in draws(120, 10, 30, seed=5, n=20)]
    c = [p.tolist() for p in draws(120, 10, 30, seed=6, n=20)]
    assert a == b
    assert a != c


def test_negative_arguments_are_refused():
    with pytest.raises(ValueError):
        sample_positions(-1)
    with pytest.raises(ValueError):
        sample_positions(10, alpha=-2)
