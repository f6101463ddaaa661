"""ReplayBuffer: only successes, capacity per prompt, the cut distribution, JSON state round-trip."""

import json
import math

import pytest
import torch

from tokrl.algorithms import ReplayBuffer

SIGMAS = 5.0


def band(p, n):
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def test_only_successes_are_stored():
    buf = ReplayBuffer(capacity=4, success_threshold=1.0)
    assert not buf.add("q", [1, 2], 0.0)
    assert not buf.add("q", [1, 2], 0.999)
    assert not buf.add("q", [1, 2], None)
    assert not buf.add("q", [], 1.0)  # nothing to cut
    assert len(buf) == 0 and buf.sample_prefix("q") == []
    assert buf.add("q", [1, 2], 1.0)  # reward >= threshold
    assert buf.add("q", [3], 2.0)
    assert not buf.add("q", [1, 2], 1.0)  # already stored
    assert buf.completions("q") == [[1, 2], [3]] and len(buf) == 2


def test_threshold_is_configurable():
    buf = ReplayBuffer(capacity=2, success_threshold=0.5)
    assert buf.add("q", [1], 0.5) and not buf.add("q", [2], 0.49)


def test_capacity_per_prompt_keeps_the_newest():
    buf = ReplayBuffer(capacity=3)
    for t in range(6):
        buf.add("a", [t, t], 1.0)
    buf.add("b", [9], 1.0)
    assert buf.completions("a") == [[3, 3], [4, 4], [5, 5]]
    assert buf.completions("b") == [[9]]
    assert len(buf) == 4
    assert buf.sample_prefix("unknown", torch.Generator().manual_seed(0)) == []


def test_capacity_zero_stores_nothing():
    buf = ReplayBuffer(capacity=0)
    assert not buf.add("q", [1, 2], 1.0) and len(buf) == 0


def test_cut_is_uniform_over_positions():
    # One success of length 5: the prefix is o[:c] with c uniform in {0, .., 4}, each with p = 1/5.
    buf = ReplayBuffer()
    buf.add("q", [10, 11, 12, 13, 14], 1.0)
    gen = torch.Generator().manual_seed(0)
    n = 5000
    counts = [0] * 5
    for _ in range(n):
        prefix = buf.sample_prefix("q", gen)
        assert prefix == [10, 11, 12, 13, 14][: len(prefix)]
        counts[len(prefix)] += 1
    for c in counts:
        assert abs(c / n - 0.2) <= band(0.2, n)


def test_stored_success_is_chosen_uniformly():
    # A = 1 2 3 (3 cuts), B = 4 5 6 7 8 9 (6 cuts), each chosen with p = 1/2:
    # P([]) = 1/2 * 1/3 + 1/2 * 1/6 = 1/4, P(starts with A) = 1/2 * 2/3 = 1/3, P(starts with B) = 1/2 * 5/6 = 5/12.
    buf = ReplayBuffer()
    buf.add("q", [1, 2, 3], 1.0)
    buf.add("q", [4, 5, 6, 7, 8, 9], 1.0)
    gen = torch.Generator().manual_seed(1)
    n = 6000
    prefixes = [buf.sample_prefix("q", gen) for _ in range(n)]
    empty = sum(not p for p in prefixes) / n
    from_a = sum(bool(p) and p[0] == 1 for p in prefixes) / n
    from_b = sum(bool(p) and p[0] == 4 for p in prefixes) / n
    assert abs(empty - 1 / 4) <= band(1 / 4, n)
    assert abs(from_a - 1 / 3) <= band(1 / 3, n)
    assert abs(from_b - 5 / 12) <= band(5 / 12, n)


def test_state_dict_round_trips_through_json():
    buf = ReplayBuffer(capacity=3)
    buf.add("prompt one", [5, 6, 7], 1.0)
    buf.add("prompt one", [8], 1.0)
    buf.add("p2", [1, 2, 3, 4], 1.0)
    state = json.loads(json.dumps(buf.state_dict()))
    other = ReplayBuffer(capacity=3)
    other.add("stale", [1], 1.0)  # loading replaces what was there
    other.load_state_dict(state)
    assert other.state_dict() == buf.state_dict()
    assert other.completions("stale") == [] and len(other) == 3
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert [buf.sample_prefix("p2", g1) for _ in range(10)] == [other.sample_prefix("p2", g2) for _ in range(10)]


def test_load_trims_to_capacity_keeping_newest():
    small = ReplayBuffer(capacity=2)
    small.load_state_dict({"entries": {"q": [[1], [2], [3]]}})
    assert small.completions("q") == [[2], [3]]


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=-1)
