"""Seeds of the run's random streams, derived from (seed, step[, stream]) so a resumed run repeats an
uninterrupted one and N processes can draw exactly what one process draws."""

from __future__ import annotations

_MODULUS = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive stream numbers far apart


def step_seed(seed: int, step: int) -> int:
    """A per-step seed: distinct streams for every (seed, step), stable across runs and resumes."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % _MODULUS


def stream_seed(seed: int, step: int, stream: int) -> int:
    """Seed of random stream `stream` of `step` (stream 0 is `step_seed` itself): streams 2j + 1 and
    2j + 2 sample and select for prompt j, stream -r samples rank r's batch."""
    return (step_seed(seed, step) + stream * _GOLDEN) % _MODULUS
