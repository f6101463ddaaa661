"""Eager decoding that runs each distinct prefix once: rows that have chosen the same tokens so far share one
forward row (a node), and every row still draws its own next token from its node's distribution.

Why: the next-token distribution is a function of (prompt, tokens so far) alone, and the G rows of one prompt
often agree on their first tokens (short answers, a policy that is often right). At the tiny-multiplication
warm start, 512 rows (64 prompts x 8) have 72 / 180 / 265 / 240 distinct prefixes at decode steps 1-4, so a
step forwards 2.7x fewer rows, and fewer still as the policy sharpens. Rows that are done leave their node.

Shapes: P distinct prompts left-padded to L; B = P * G rows (rows p*G .. p*G + G - 1 continue prompt p);
n = max_new_tokens; U_t nodes at step t; C = L + n - 1 cache columns.

    prefill   model(prompts [P, L]) -> keys/values [P, H_kv, L, D] per layer, logits [P, V]; the node of row b
              is its prompt (U_0 = P)
    token t   choose_tokens(node logits [U_t, V], node of each row [B]) -> token t and its log-prob per row
              (one uniform per row, so the random stream is that of a decode of all B rows)
    step t>=1 nodes = distinct (node_{t-1}(b), token_{t-1}(b)) over the rows not done; each node's keys/values
              [U_t, H_kv, C, D] are its parent's (a row gather), and the forward of its token t-1 at column
              L + t - 1 (position |prompt| + t - 1) writes that column -> logits [U_t, V]
Done rows' tokens are the pad id and the loop ends once every row is done, as in the full-row decode
(`tokrl.sampler.engine.run_eager`, which a captured CUDA graph needs: its rows cannot change between steps).

The values: the same function of the same inputs as a decode of all B rows, computed over fewer rows; a
matmul over U rows may round differently in the last bits from one over B rows, so tokens equal the
full-row decode's except where a draw falls within that rounding of a token boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokrl.models.forward import additive_mask
from tokrl.sampler.engine import Overrides, forward_logits, prefill
from tokrl.sampler.kv_cache import DecodeCache
from tokrl.sampler.rows import left_pad
from tokrl.sampler.token_sampling import SamplingOptions, choose_tokens


@dataclass
class Decoded:
    """What a decode produced: new_tokens [B, n] int64 (pad after a row's EOS), new_logps [B, n] fp32; steps:
    the decode steps run after token 0 (fewer than n - 1 when every row finished early); forward_rows: the
    rows those steps forwarded, sum of U_t (B per step for a decode of every row)."""

    new_tokens: torch.Tensor
    new_logps: torch.Tensor
    steps: int
    forward_rows: int


class _Nodes:
    """The distinct prefixes of one step: their keys/values and the prompt each continues."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], prompt: torch.Tensor) -> None:
        self.keys, self.values = keys, values  # per layer [U, H_kv, C, D]
        self.prompt = prompt  # [U] int64: the prompt each node continues

    def branch(self, parent: torch.Tensor) -> _Nodes:
        """The next step's nodes, node j continuing `parent[j]` ([U'] int64): its cache rows are copied, unless
        every node has exactly one child (long completions once they have parted), which keeps the rows as they are."""
        same_rows = torch.arange(len(self.prompt), device=parent.device)  # [U]
        if parent.shape == same_rows.shape and torch.equal(parent, same_rows):
            return self
        return _Nodes(
            [k.index_select(0, parent) for k in self.keys],  # [U', H_kv, C, D]
            [v.index_select(0, parent) for v in self.values],
            self.prompt.index_select(0, parent),  # [U']
        )


def _prompt_nodes(keys: list[torch.Tensor], values: list[torch.Tensor], columns: int) -> _Nodes:
    """The P prompts as step 0's nodes, their [P, H_kv, L, D] caches widened to `columns` (C) columns."""

    def widen(states: torch.Tensor) -> torch.Tensor:
        rows, heads, width, dim = states.shape
        out = states.new_zeros(rows, heads, columns, dim)  # [P, H_kv, C, D]
        out[:, :, :width] = states
        return out

    return _Nodes([widen(k) for k in keys], [widen(v) for v in values], torch.arange(keys[0].shape[0]))


@torch.no_grad()
def run_prefix_shared(
    body: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    max_new_tokens: int,
    options: SamplingOptions,
    eos_ids: Sequence[int],
    pad_id: int,
    overrides: Overrides | None = None,
) -> Decoded:
    """Decode G rows per prompt, n tokens at most, one forward row per distinct prefix (module docstring)."""
    device = body.get_output_embeddings().weight.device
    ids, mask = left_pad(prompts, pad_id, device)  # [P, L], [P, L]
    width, batch = ids.shape[1], len(prompts) * num_generations
    cache, logits = prefill(body, ids, mask, overrides)  # [P, .., L], [P, V]
    vocab, kv_dtype = logits.shape[-1], cache.layers[0].keys.dtype
    columns = width + max_new_tokens - 1
    nodes = _prompt_nodes([la.keys for la in cache.layers], [la.values for la in cache.layers], columns)
    del cache
    visible = torch.ones(len(prompts), columns, dtype=torch.bool, device=device)  # [P, C] generated columns visible
    visible[:, :width] = mask.bool()  # [P, L] the prompt's real tokens
    prompt_bias = additive_mask(visible[:, None, None, :], kv_dtype)  # [P, 1, 1, C]; the window hides the rest
    lengths = mask.sum(-1)  # [P] real prompt tokens
    eos = torch.as_tensor(list(eos_ids), dtype=torch.int64, device=device)  # [E]
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.int64, device=device)  # [B, n]
    logps = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)  # [B, n]
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    node_of_row = torch.arange(len(prompts), device=device).repeat_interleave(num_generations)  # [B]
    steps = forward_rows = 0
    for t in range(max_new_tokens):
        if t > 0:
            live = ~done  # [B]
            if not bool(live.any()):
                break
            # A node is (parent node, token fed): one int64 key per live row, its distinct values sorted.
            key = node_of_row[live] * vocab + tokens[live, t - 1]  # [B_live]
            distinct, inverse = torch.unique(key, return_inverse=True)  # [U], [B_live]
            nodes = nodes.branch(distinct // vocab)
            node_of_row = torch.zeros(batch, dtype=torch.int64, device=device).masked_scatter_(live, inverse)  # [B]
            column = width + t - 1  # the cache column token t - 1 is written at
            step_cache = DecodeCache(nodes.keys, nodes.values, torch.tensor([column], device=device))
            step_cache.eager, step_cache.length, step_cache.window = True, column, column + 1
            fed = (distinct % vocab)[:, None]  # [U, 1]
            position = (lengths.index_select(0, nodes.prompt) + t - 1)[:, None]  # [U, 1]
            bias = prompt_bias.index_select(0, nodes.prompt)[..., : column + 1]  # [U, 1, 1, L + t]
            logits = forward_logits(body, fed, position, bias, step_cache, overrides)  # [U, V]
            steps, forward_rows = steps + 1, forward_rows + len(distinct)
        chosen, logp = choose_tokens(logits, options, rows=node_of_row)  # [B], [B]
        chosen = torch.where(done, pad_id, chosen)  # [B] done rows stay padded
        tokens[:, t], logps[:, t] = chosen, logp
        done |= torch.isin(chosen, eos)  # [B]
    return Decoded(tokens, logps, steps, forward_rows)
