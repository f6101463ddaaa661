"""The loss forward over each distinct prompt's prefix tree, in one pass: every distinct (prompt, completion
prefix) the loss reads runs once, however many rows share it.

A row b reads its completion's hidden states at positions 0 .. last_b (the last selected one); the state that
predicts token t is a function of (prompt_b, completion_b[:t]) alone. Per distinct prompt p, the prefixes its
rows read form a tree: node = (parent node, token), the root being the prompt itself. One decoder pass runs
each prompt with its tree laid out after it:

    ids        [P, W]  prompt p left-padded to Lp, then its N_p nodes' tokens (parents before children),
                       right-padded to N = max N_p; W = Lp + N
    positions  [P, W]  the prompt's real tokens count from 0; a node at depth d (d >= 1): |p| + d - 1
    visible    [P, W, W]  a prompt column sees the real prompt columns up to itself; a node sees the real
                       prompt columns, its ancestors and itself (a padding node itself only)
    hidden     [P * W, D] flattened
Completion token t of row b is predicted at its prompt's last column when t == 0, else at the column of node
completion_b[:t]; rows that share a prefix read the same column (the loss kernels add repeated indices up in
backward). At the tiny-multiplication shape (64 prompts x 8 completions of <= 5 tokens) the rows share most
prefixes and one pass replaces the two of tokrl/stages/prompt_sharing.py's layout.

The values: the same function of the same inputs as a forward of every row (the packed forward), so the
log-probs and LoRA gradients agree up to float summation order (tests/test_prompt_sharing.py, every model family
`unsupported_reason` accepts), with LoRA dropout masks drawn per node instead of per row. Attention grows with
W^2 per prompt, so for long completions, which share little beyond the prompt, `tree_is_cheaper` keeps the
two-pass layout (projections cost ~24 D^2 per token, attention ~4 D per (query, key) pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokrl.models.forward import additive_mask, decoder_stack
from tokrl.stages.select import LossRows, last_positions


@dataclass
class PrefixTrees:
    """The distinct prompts and, per prompt, its nodes (host lists), with each row's path through them.

    prompts: the distinct prompts in first-seen order; parents[p] / tokens[p] / depths[p]: per node of prompt
    p, its parent node (-1: the prompt), token and depth (1 for a first completion token); prompt_of_row[b] and
    path[b]: row b's prompt index and the nodes of completion_b[:1], .., completion_b[:last_b]."""

    prompts: list[tuple[int, ...]]
    parents: list[list[int]]
    tokens: list[list[int]]
    depths: list[list[int]]
    prompt_of_row: dict[int, int]
    path: dict[int, list[int]]

    @classmethod
    def build(cls, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], rows: LossRows):
        """The trees of the rollout rows that own a selected token (inputs: prompt + completion[:last])."""
        active, _, last_position = last_positions(rows)  # [B'], _, [B']
        last = dict(zip(active.tolist(), last_position.tolist(), strict=True))
        trees = cls([], [], [], [], {}, {})
        index: dict[tuple[int, ...], int] = {}
        children: list[dict[tuple[int, int], int]] = []
        for b in sorted(last):
            key = tuple(prompts[b])
            if key not in index:
                index[key] = len(trees.prompts)
                trees.prompts.append(key)
                children.append({})
                trees.parents.append([])
                trees.tokens.append([])
                trees.depths.append([])
            p = trees.prompt_of_row[b] = index[key]
            node, path = -1, []
            for token in completions[b][: last[b]]:
                found = children[p].get((node, token))
                if found is None:
                    found = children[p][(node, token)] = len(trees.tokens[p])
                    trees.parents[p].append(node)
                    trees.tokens[p].append(token)
                    trees.depths[p].append(len(path) + 1)
                node = found
                path.append(node)
            trees.path[b] = path
        return trees

    @property
    def width(self) -> tuple[int, int]:
        """(Lp, N): the longest prompt, the most nodes of one prompt."""
        return max(map(len, self.prompts), default=0), max(map(len, self.tokens), default=0)


def tree_is_cheaper(trees: PrefixTrees, hidden_size: int) -> bool:
    """Whether one pass over the trees costs no more than the two passes of tokrl/stages/prompt_sharing.py
    (prompts [P, Lp], then the B_c rows with a continuation [B_c, Lc] over Lp + Lc keys): the estimated FLOPs
    24 D^2 per token + 4 D per attended (query, key) pair, padding included (module docstring)."""
    prompt_width, nodes = trees.width
    count, width = len(trees.prompts), prompt_width + nodes
    continued = [len(path) for path in trees.path.values() if path]  # |c_b| of the B_c continuation rows
    cont_width = max(continued, default=0)
    two_pass_tokens = count * prompt_width + len(continued) * cont_width
    two_pass_pairs = count * prompt_width**2 + len(continued) * cont_width * (prompt_width + cont_width)
    tree = 6 * hidden_size * count * width + count * width * width
    return tree <= 6 * hidden_size * two_pass_tokens + two_pass_pairs


@dataclass
class PrefixTreeBatch:
    """One pass's inputs (module docstring): ids, positions [P, W] int64; visible [P, W, W] bool; tokens: 0-d
    int64, the real tokens (prompt tokens and nodes)."""

    ids: torch.Tensor
    positions: torch.Tensor
    visible: torch.Tensor
    tokens: torch.Tensor


def _ancestors(parents: torch.Tensor, depth: int) -> torch.Tensor:
    """[P, N, N] bool: node k is node j itself or one of its ancestors, for parents [P, N] (-1: the prompt)."""
    count, nodes = parents.shape
    seen = torch.eye(nodes, dtype=torch.bool, device=parents.device).repeat(count, 1, 1)  # [P, N, N]
    sink = torch.zeros(count, nodes, nodes + 1, dtype=torch.bool, device=parents.device)  # column N: "no node"
    above = parents  # [P, N] each node's ancestor one level up, then two, ... (-1 past the root)
    for _ in range(depth - 1):
        sink.scatter_(2, above.masked_fill(above < 0, nodes)[..., None], True)
        above = torch.where(above < 0, above, parents.gather(1, above.clamp_min(0)))  # [P, N]
    return seen | sink[..., :nodes]


def pack_prefix_trees(
    trees: PrefixTrees, rows: LossRows, pad_id: int, device: torch.device | str
) -> tuple[PrefixTreeBatch, torch.Tensor]:
    """The pass's batch and the flat hidden-state index of every selected token ([k] int64 into
    `prefix_tree_hidden`'s rows; rows sharing a prefix share an index)."""
    prompt_width, nodes = trees.width
    width, count = prompt_width + nodes, len(trees.prompts)
    ids = [
        [pad_id] * (prompt_width - len(p)) + list(p) + t + [pad_id] * (nodes - len(t))
        for p, t in zip(trees.prompts, trees.tokens, strict=True)
    ]
    lengths = torch.tensor([len(p) for p in trees.prompts], dtype=torch.int64)  # [P]
    real = torch.arange(prompt_width)[None, :] >= (prompt_width - lengths)[:, None]  # [P, Lp]
    depth = torch.tensor([d + [0] * (nodes - len(d)) for d in trees.depths], dtype=torch.int64)
    depth = depth.reshape(count, nodes)  # [P, N] (0: a padding node)
    parents = torch.tensor([q + [-1] * (nodes - len(q)) for q in trees.parents], dtype=torch.int64)
    parents = parents.reshape(count, nodes)  # [P, N]
    positions = torch.cat(
        [(real.cumsum(-1) - 1).clamp_min(0), (lengths[:, None] + depth - 1).clamp_min(0)], dim=1
    )  # [P, W]
    visible = torch.zeros(count, width, width, dtype=torch.bool)  # [P, W, W]
    causal = torch.ones(prompt_width, prompt_width, dtype=torch.bool).tril()  # [Lp, Lp]
    visible[:, :prompt_width, :prompt_width] = causal[None] & real[:, None, :]
    visible[:, prompt_width:, :prompt_width] = real[:, None, :]
    deepest = max((max(d) for d in trees.depths if d), default=1)
    visible[:, prompt_width:, prompt_width:] = _ancestors(parents, deepest)
    index = [
        trees.prompt_of_row[b] * width + (prompt_width - 1 if t == 0 else prompt_width + trees.path[b][t - 1])
        for b, t in zip(rows.row.tolist(), rows.position.tolist(), strict=True)
    ]
    batch = PrefixTreeBatch(
        ids=torch.tensor(ids, dtype=torch.int64).reshape(count, width).to(device),  # [P, W]
        positions=positions.to(device),  # [P, W]
        visible=visible.to(device),  # [P, W, W]
        tokens=torch.tensor(int(lengths.sum()) + sum(map(len, trees.tokens)), device=device),
    )
    return batch, torch.tensor(index, dtype=torch.int64).to(device)  # [k]


def prefix_tree_hidden(model: torch.nn.Module, batch: PrefixTreeBatch) -> torch.Tensor:
    """Final-norm hidden states of the pass, flattened: [P * W, D] (module docstring)."""
    decoder = decoder_stack(model)
    dtype = decoder.get_input_embeddings().weight.dtype
    bias = additive_mask(batch.visible[:, None], dtype)  # [P, 1, W, W]
    hidden = decoder(
        input_ids=batch.ids, position_ids=batch.positions, attention_mask=bias, use_cache=False
    ).last_hidden_state  # [P, W, D]
    return hidden.reshape(-1, hidden.shape[-1])
