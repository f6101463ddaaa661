"""S-GRPO's stochastic token selection for one completion.

For a completion of length L with `alpha` and cap k = `max_tokens`:
  * positions 0 .. min(alpha, L) - 1 are always selected (early tokens decide the reasoning path);
  * each later position t >= alpha is selected independently with p = min(1, alpha / (L - alpha)),
    so about alpha later tokens are expected and the expected total is about 2 * alpha;
  * if more than k are selected, keep the first alpha and a uniform random subset of the selected later
    positions, k in all. When k < alpha the cap wins: only the first k positions are kept.
Memory: the loss touches at most k of the L positions, and the forward can stop after the last one.
"""

from __future__ import annotations

import torch


def sample_positions(
    length: int, alpha: int = 25, max_tokens: int = 50, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Selected positions of a completion of `length` tokens: sorted, unique, int64, each in [0, length).

    Draws from `generator` (the global RNG when None): one uniform per later position, then a permutation
    of the selected later positions only when the cap binds.
    returns: [n] int64 with n <= max_tokens.
    """
    if length < 0 or alpha < 0 or max_tokens < 0:
        raise ValueError(
            f"sample_positions: length, alpha, max_tokens must be >= 0; got {length}, {alpha}, {max_tokens}"
        )
    head = min(alpha, length, max_tokens)
    first = torch.arange(head, dtype=torch.int64)  # [head] always selected
    n_later = length - alpha
    if n_later <= 0 or head < alpha:
        return first  # [head]: no later positions exist, or the cap is already spent on the first ones
    p = min(1.0, alpha / n_later)
    draws = torch.rand(n_later, generator=generator)  # [L - alpha] one uniform per later position
    later = torch.nonzero(draws < p).flatten() + alpha  # [m] int64, sorted
    room = max_tokens - alpha
    if later.numel() > room:
        keep = torch.randperm(later.numel(), generator=generator)[:room]  # [room] uniform subset
        later = later[keep].sort().values  # [room] sorted again
    return torch.cat([first, later])  # [alpha + m] sorted unique
