"""S-GRPO's stochastic token selection for one completion: which positions enter the loss.

Both rules always select positions 0 .. min(alpha, L, k) - 1 (early tokens decide the reasoning path) and
select at most k = `max_tokens` positions in all. They differ in the later positions t >= alpha:

rule="sequential" (the default; the paper's rule as secondary descriptions of it state it): walk t = alpha,
    alpha + 1, ... in order; while fewer than k are selected, t is selected with probability P = `keep_prob`
    (one Bernoulli draw per position). The selected tokens are the earliest that pass, so the last one sits
    near alpha + (k - alpha) / P whatever L is, and the loss forward, which stops after the last selected
    position, stays short. [paper: the rule; ours: P = 0.5 by default, since the paper's value could not be
    read.] The draws are one uniform per later position, taken up front; a walk that stopped drawing at the
    cap would select the same positions in distribution.
rule="spread" (this project's earlier rule): each later position is selected independently with
    p = min(1, alpha / (L - alpha)), about alpha expected; when more than k are selected, keep the first
    alpha and a uniform random subset of the later ones. The picks spread over the whole completion, so the
    forward must run almost to its end.
When k < alpha the cap wins under both rules: only the first k positions are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokrl.infra.registry import unknown_choice
from tokrl.infra.validation import require


def _sequential_later(n_later: int, alpha: int, room: int, keep_prob: float, generator) -> torch.Tensor:
    """The earliest later positions that pass a Bernoulli(keep_prob) draw, at most `room`: [m] int64."""
    draws = torch.rand(n_later, generator=generator)  # [L - alpha] one uniform per later position
    return torch.nonzero(draws < keep_prob).flatten()[:room] + alpha  # [m <= room] sorted


def _spread_later(n_later: int, alpha: int, room: int, keep_prob: float, generator) -> torch.Tensor:
    """Later positions drawn with p = min(1, alpha / n_later), a uniform subset of `room` if over: [m] int64."""
    p = min(1.0, alpha / n_later)
    draws = torch.rand(n_later, generator=generator)  # [L - alpha] one uniform per later position
    later = torch.nonzero(draws < p).flatten() + alpha  # [m] int64, sorted
    if later.numel() > room:
        keep = torch.randperm(later.numel(), generator=generator)[:room]  # [room] uniform subset
        later = later[keep].sort().values  # [room] sorted again
    return later


_LATER_RULES = {"sequential": _sequential_later, "spread": _spread_later}
SELECTION_RULES = tuple(_LATER_RULES)


def check_selection_options(
    alpha: int, max_tokens: int, rule: str, keep_prob: float, *, rule_key: str = "rule"
) -> None:
    """S-GRPO's selection options, checked in this one place (the config, S-GRPO and the functions below call
    it): alpha and max_tokens >= 0, a known rule (named `rule_key` in the error), keep_prob in (0, 1]."""
    require(alpha >= 0, f"alpha: must be >= 0, got {alpha}")
    require(max_tokens >= 0, f"max_tokens: must be >= 0, got {max_tokens}")
    if rule not in _LATER_RULES:
        raise unknown_choice(rule_key, rule, list(SELECTION_RULES))
    require(0.0 < keep_prob <= 1.0, f"keep_prob: must be in (0, 1], got {keep_prob}")


def sample_positions(
    length: int,
    alpha: int = 25,
    max_tokens: int = 50,
    generator: torch.Generator | None = None,
    *,
    rule: str = "sequential",
    keep_prob: float = 0.5,
) -> torch.Tensor:
    """Selected positions of a completion of `length` tokens: sorted, unique, int64, each in [0, length).

    Draws from `generator` (the global RNG when None): one uniform per later position (both rules), then,
    under "spread", a permutation of the selected later positions only when the cap binds.
    keep_prob: P of the sequential rule, in (0, 1]; unused by "spread".
    returns: [n] int64 with n <= max_tokens.
    """
    if length < 0:
        raise ValueError(f"sample_positions: length must be >= 0, got {length}")
    check_selection_options(alpha, max_tokens, rule, keep_prob)
    head = min(alpha, length, max_tokens)
    first = torch.arange(head, dtype=torch.int64)  # [head] always selected
    n_later = length - alpha
    if n_later <= 0 or head < alpha:
        return first  # [head]: no later positions exist, or the cap is already spent on the first ones
    later = _LATER_RULES[rule](n_later, alpha, max_tokens - alpha, keep_prob, generator)  # [m] sorted
    return torch.cat([first, later])  # [alpha + m] sorted unique


def sample_group_positions(
    lengths: Sequence[int],
    alpha: int = 25,
    max_tokens: int = 50,
    generator: torch.Generator | None = None,
    *,
    rule: str = "sequential",
    keep_prob: float = 0.5,
) -> list[list[int]]:
    """`sample_positions` for completions of `lengths`, in order, as lists: the same positions from the same
    draws as calling it once per completion with the same generator.

    The sequential rule draws every completion's uniforms in one `torch.rand` and compares them in one op
    (torch's CPU uniform stream is sequential: rand(a) then rand(b) equals rand(a + b) split at a, which
    tests/algorithms/test_sample_positions.py checks), so a group costs a few ops instead of several per
    completion. The spread rule may draw a permutation between two completions' uniforms, so it keeps the
    per-completion calls.
    """
    if rule != "sequential" or not lengths:
        return [
            sample_positions(n, alpha, max_tokens, generator, rule=rule, keep_prob=keep_prob).tolist() for n in lengths
        ]
    if min(lengths) < 0:
        raise ValueError(f"sample_positions: length must be >= 0, got {min(lengths)}")
    check_selection_options(alpha, max_tokens, rule, keep_prob)
    room = max_tokens - alpha
    # Completions with later positions to draw for: longer than alpha, and alpha itself under the cap.
    n_later = [n - alpha if n > alpha and room >= 0 else 0 for n in lengths]
    total = sum(n_later)
    passed = (torch.rand(total, generator=generator) < keep_prob).tolist() if total else []  # [sum L - alpha]
    out, offset = [], 0
    for n, later in zip(lengths, n_later, strict=True):
        head = list(range(min(alpha, n, max_tokens)))
        kept = [alpha + t for t in range(later) if passed[offset + t]][:room] if later else []
        out.append(head + kept)
        offset += later
    return out
