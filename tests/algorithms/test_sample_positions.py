"""S-GRPO's position sampling under both rules: deterministic cases by hand, then selection statistics over
many draws ("sequential" is the paper's rule and the default; "spread" is the earlier rule, kept as is)."""

import math

import pytest
import torch

from tokrl.algorithms import sample_positions
from tokrl.algorithms.sampling import sample_group_positions

N_DRAWS = 4000
SIGMAS = 5.0  # a 5-sigma binomial band: a correct sampler fails it about once in 1.7 million checks


def draws(length, alpha, max_tokens, seed=0, n=N_DRAWS, rule="spread", keep_prob=0.5):
    gen = torch.Generator().manual_seed(seed)
    return [sample_positions(length, alpha, max_tokens, gen, rule=rule, keep_prob=keep_prob) for _ in range(n)]


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
def test_deterministic_cases_spread(length, alpha, max_tokens, expected):
    gen = torch.Generator().manual_seed(1)
    assert sample_positions(length, alpha, max_tokens, gen, rule="spread").tolist() == expected


@pytest.mark.parametrize(
    ("length", "alpha", "max_tokens", "keep_prob", "expected"),
    [
        (0, 25, 50, 0.5, []),  # empty completion selects nothing
        (10, 25, 50, 0.5, list(range(10))),  # shorter than alpha: all of it
        (30, 10, 4, 0.5, [0, 1, 2, 3]),  # cap below alpha: the cap wins, first 4
        (80, 25, 50, 1.0, list(range(50))),  # P = 1: every position passes, the first k are kept
        (40, 0, 3, 1.0, [0, 1, 2]),  # alpha = 0, P = 1: the earliest three
    ],
)
def test_deterministic_cases_sequential(length, alpha, max_tokens, keep_prob, expected):
    gen = torch.Generator().manual_seed(1)
    assert sample_positions(length, alpha, max_tokens, gen, keep_prob=keep_prob).tolist() == expected


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
    with pytest.raises(ValueError, match="rule"):
        sample_positions(10, rule="uniform")
    with pytest.raises(ValueError, match="keep_prob"):
        sample_positions(10, keep_prob=0.0)


# ------------------------------------------------------------------------------------ the sequential rule


def test_sequential_is_the_default():
    a = sample_positions(200, 25, 50, torch.Generator().manual_seed(3))
    b = sample_positions(200, 25, 50, torch.Generator().manual_seed(3), rule="sequential")
    assert a.tolist() == b.tolist()


def test_sequential_keeps_the_earliest_passes():
    # P(t selected) for t >= alpha = P * P(Binomial(t - alpha, P) < k - alpha): it passes its own draw and fewer
    # than k - alpha earlier later-positions did. A rule that spreads picks or subsamples uniformly fails this.
    length, alpha, cap, p = 40, 4, 10, 0.4
    room = cap - alpha
    samples = draws(length, alpha, cap, seed=21, rule="sequential", keep_prob=p)
    hits = torch.zeros(length)
    counts = []
    for pos in samples:
        check_invariants(pos, length, alpha, cap)
        hits[pos] += 1
        counts.append(pos.numel())
    freq = hits / N_DRAWS
    assert freq[:alpha].tolist() == [1.0] * alpha
    for t in range(alpha, length):
        n = t - alpha
        below = sum(math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(min(room, n + 1)))
        want = p * below
        assert abs(float(freq[t]) - want) <= binomial_band(want, N_DRAWS), f"position {t}: {float(freq[t])} vs {want}"
    # The count is min(k, alpha + successes), successes ~ Binomial(L - alpha, P).
    n_later = length - alpha
    pmf = [math.comb(n_later, x) * p**x * (1 - p) ** (n_later - x) for x in range(n_later + 1)]
    mean = sum(min(alpha + x, cap) * q for x, q in enumerate(pmf))
    var = sum(min(alpha + x, cap) ** 2 * q for x, q in enumerate(pmf)) - mean**2
    assert abs(sum(counts) / N_DRAWS - mean) <= SIGMAS * math.sqrt(var / N_DRAWS)


def test_sequential_last_position_stays_early():
    # L = 200, alpha = 25, k = 50, P = 0.5: the last selected is position alpha - 1 + T, where T is the trial of
    # the 25th success (negative binomial, mean 25 / P = 50, sd sqrt(25 (1 - P)) / P = 7.1), so its mean is
    # 74 = alpha + (k - alpha) / P - 1. Under the spread rule the last pick sits near the end (~190).
    def mean_last(rule):
        samples = draws(200, 25, 50, seed=22, n=1000, rule=rule)
        return sum(int(pos[-1]) for pos in samples) / len(samples)

    assert abs(mean_last("sequential") - 74.0) < 1.5  # sd of the mean ~ 0.22
    assert mean_last("spread") > 150


# ------------------------------------------------------------------------ a whole group's draws at once


def test_torch_uniform_stream_splits_anywhere():
    # sample_group_positions relies on it: rand(a) then rand(b) from one CPU generator equals rand(a + b).
    for seed, sizes in enumerate([[3, 5], [0, 7, 1], [40, 200, 17, 1], [1] * 30, [70000, 5]]):
        gen = torch.Generator().manual_seed(seed)
        pieces = torch.cat([torch.rand(n, generator=gen) for n in sizes])
        after_pieces = torch.rand(4, generator=gen)
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(pieces, torch.rand(sum(sizes), generator=gen)), sizes
        assert torch.equal(after_pieces, torch.rand(4, generator=gen)), sizes


@pytest.mark.parametrize("rule", ["sequential", "spread"])
@pytest.mark.parametrize(
    ("alpha", "max_tokens", "keep_prob"),
    [
        (2, 4, 0.75),  # the tiny-multiplication preset
        (25, 50, 0.5),  # the paper's defaults
        (5, 3, 0.5),  # the cap below alpha: no draws at all
        (0, 6, 0.3),  # alpha = 0: every position is a later one
        (3, 3, 1.0),  # no room after alpha, P = 1
    ],
)
def test_group_positions_equal_one_call_per_completion(rule, alpha, max_tokens, keep_prob):
    rng = torch.Generator().manual_seed(alpha * 100 + max_tokens)
    for trial in range(20):
        lengths = torch.randint(0, 90, (int(torch.randint(1, 9, (1,), generator=rng)),), generator=rng).tolist()
        seed = trial + 1000 * alpha
        gen_one, gen_group = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        one = [
            sample_positions(n, alpha, max_tokens, gen_one, rule=rule, keep_prob=keep_prob).tolist() for n in lengths
        ]
        group = sample_group_positions(lengths, alpha, max_tokens, gen_group, rule=rule, keep_prob=keep_prob)
        assert group == one, (lengths, seed)
        # ...and the generator is left where the per-completion calls leave it.
        assert torch.equal(torch.rand(3, generator=gen_one), torch.rand(3, generator=gen_group))


def test_group_positions_refuse_what_sample_positions_refuses():
    with pytest.raises(ValueError, match="length"):
        sample_group_positions([3, -1])
    with pytest.raises(ValueError, match="keep_prob"):
        sample_group_positions([3], keep_prob=1.5)
    with pytest.raises(ValueError, match="rule"):
        sample_group_positions([3], rule="uniform")
    assert sample_group_positions([]) == []
