"""T-SPMO's prefix matching: per-(prefix, next token) advantages from a trie over one group.

A trie node is a prefix p (the shared context plus the first t completion tokens), an edge p -> p+v is
the next token v. With S(p) the completions through p and S(p, v) those continuing with v:

    A(p, v) = mean_{i in S(p, v)} R_i - mean_{i in S(p)} R_i

The root is the empty prefix, so S(root) is every completion with a reward (empty completions included:
they count in the root's baseline but add no edge). Completions whose reward is None are left out.
Edges with A = 0 carry no signal (a prefix every completion through it extends the same way, or one
reached by a single completion); every other edge is one `PrefixPair`, read at one representative
(row, pos): all completions through p share the same context there.

Cost: one dict lookup per token to build, one pass over the nodes to score, so O(total tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from tokrl.algorithms.advantages import all_equal, validate_rewards

# A(p, v) below this fraction of the reward range is rounding residue of a true zero (e.g. 0.1 rewards),
# far below any real difference of means of G <= thousands of rewards.
ZERO_TOL = 1e-9


class PrefixPair(NamedTuple):
    """One (prefix, next token) pair with a learning signal.

    row, pos: a completion (index in the group) and the position of `token` in it where the pair occurs
              (the lowest row through the pair); its context is the prefix p.
    token: the next token v.
    advantage: A(p, v).
    count: |S(p, v)|, how many completions share the pair.
    """

    row: int
    pos: int
    token: int
    advantage: float
    count: int


def prefix_pairs(completions: Sequence[Sequence[int]], rewards: Sequence[float | None]) -> list[PrefixPair]:
    """Every unique (prefix, next token) pair with non-zero advantage, sorted by (row, pos).

    completions: G token-id lists (no padding); rewards: G rewards, None leaves the completion out.
    """
    if len(completions) != len(rewards):
        raise ValueError(f"prefix_pairs: {len(completions)} completions but {len(rewards)} rewards")
    validate_rewards(rewards)
    valid = [r for r in rewards if r is not None]
    if all_equal(valid):
        return []  # no reward differences, so every A(p, v) is zero
    # Node 0 is the root. Per node: parent id, reward sum, completion count, and its edge's first
    # (row, pos, token). Parallel lists plus one (parent, token) -> child dict keep this lean in Python.
    parent, total, count = [-1], [float(sum(valid))], [len(valid)]
    first_row, first_pos, token_of = [-1], [-1], [-1]
    child: dict[tuple[int, int], int] = {}
    for row, (ids, reward) in enumerate(zip(completions, rewards, strict=True)):
        if reward is None:
            continue
        node = 0
        for pos, tok in enumerate(ids):
            nxt = child.get((node, tok))
            if nxt is None:
                nxt = len(parent)
                child[(node, tok)] = nxt
                parent.append(node)
                total.append(0.0)
                count.append(0)
                first_row.append(row)
                first_pos.append(pos)
                token_of.append(int(tok))
            total[nxt] += reward
            count[nxt] += 1
            node = nxt
    tol = ZERO_TOL * (max(valid) - min(valid))
    pairs = []
    for n in range(1, len(parent)):
        adv = total[n] / count[n] - total[parent[n]] / count[parent[n]]
        if abs(adv) > tol:
            pairs.append(PrefixPair(first_row[n], first_pos[n], token_of[n], adv, count[n]))
    pairs.sort(key=lambda p: (p.row, p.pos))
    return pairs
