"""The loss forward with each distinct prompt run once: one pass over each prompt's prefix tree
(tokrl/stages/prefix_tree.py) where that is estimated no costlier, else two passes, the rows continuing from
their prompt's keys/values (below).

The packed forward (`tokrl.stages.select.pack_loss_batch`) runs every loss row whole, prompt_b + c_b with
c_b = completion_b[:last selected position], so a prompt sampled G times runs G times. Here, in two passes:

    prompts        P distinct prompt rows, left-padded [P, Lp], positions over real tokens
                   -> hidden [P, Lp, D], keys/values per layer [P, H_kv, Lp, d] (kept with their graph)
    continuations  the B rows with c_b non-empty, right-padded [B, Lc]; positions |p_b| + t; each attends to
                   its prompt's keys/values (gathered per row: [B, H_kv, Lp, d]) and causally to itself
                   -> hidden [B, Lc, D]
    flat = cat(prompt hidden, continuation hidden)  [P * Lp + B * Lc, D]
Completion token t of row b is predicted at its prompt's last column when t == 0, else at continuation column
t - 1 of row b. The forward runs over sum_p |p| + sum_b |c_b| tokens instead of sum_b (|p_b| + |c_b|): at the
tiny-multiplication shape (6-token prompts, G = 8, about 4 completion tokens) 2.3x fewer.

Values: the same function of the same inputs as the packed forward; log-probs and LoRA gradients agree up to
float summation order (tests/test_prompt_sharing.py, LoRA dropout off, every model family that passes
`unsupported_reason`). With LoRA dropout the prompt tokens' masks are drawn once per prompt instead of once
per row, so a run differs from a packed-forward run of the same seed (each row still sees a dropout mask
with the same distribution). Gradients reach the prompt pass through the gathered keys/values.

Needs a decoder that takes position_ids and writes its keys/values through the transformers Cache
(`update`), with full attention only (an explicit additive mask of every column); gradient checkpointing
drops caches during training, so it is ruled out too (`PolicyUpdate` then runs the plain forward, with a warning).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from tokrl.models.forward import additive_mask, decoder_stack, transformers_model
from tokrl.stages.prefix_tree import (
    PrefixTreeBatch,
    PrefixTrees,
    pack_prefix_trees,
    prefix_tree_hidden,
    tree_is_cheaper,
)
from tokrl.stages.select import LossRows

SUPPORTED_ATTENTION = ("eager", "sdpa")


@dataclass
class SharedPromptBatch:
    """The two passes' inputs (module docstring).

    prompt_ids, prompt_mask [P, Lp] int64, left-padded distinct prompts; ids, mask [B, Lc] int64, right-padded
    continuations; prompt_of_row [B] int64: which prompt each continuation row continues; tokens: 0-d int64,
    the real tokens both passes run over.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    prompt_of_row: torch.Tensor
    tokens: torch.Tensor


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    """The forward's cache argument: `cache` from transformers 5.2x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the shared-prompt forward cannot run `model` (None when it can)."""
    decoder = decoder_stack(model)
    config = getattr(decoder, "config", None)
    if config is None:
        return f"{type(model).__name__} is not a transformers causal LM"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} (supported: {', '.join(SUPPORTED_ATTENTION)})"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)} (only full attention layers are supported, no sliding windows)"
    if "position_ids" not in inspect.signature(type(decoder).forward).parameters:
        return f"{type(decoder).__name__}.forward takes no position_ids"
    checkpointing = getattr(transformers_model(model), "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers before the rename
        checkpointing = getattr(transformers_model(model), "is_gradient_checkpointing", False)
    if checkpointing:
        return "gradient checkpointing is on (it drops the keys/values the rows continue from)"
    return None


def pack_shared_prompts(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    rows: LossRows,
    pad_id: int,
    device: torch.device | str,
    hidden_size: int | None = None,
) -> tuple[SharedPromptBatch | PrefixTreeBatch, torch.Tensor]:
    """The batch for the rollout rows that own a selected token, and the flat hidden-state index of every
    selected token ([k] int64 into `shared_prompt_hidden`'s rows): the prefix-tree pass when `hidden_size` (D)
    is given and `tree_is_cheaper` says so, else the two passes (both laid out from one `PrefixTrees`)."""
    trees = PrefixTrees.build(prompts, completions, rows)
    if hidden_size is not None and tree_is_cheaper(trees, hidden_size):
        return pack_prefix_trees(trees, rows, pad_id, device)
    return pack_two_passes(trees, completions, rows, pad_id, device)


def pack_two_passes(
    trees: PrefixTrees,
    completions: Sequence[Sequence[int]],
    rows: LossRows,
    pad_id: int,
    device: torch.device | str,
) -> tuple[SharedPromptBatch, torch.Tensor]:
    """The two passes' batch (module docstring) and the flat hidden-state index of every selected token; the
    distinct prompts, each row's prompt and its continuation length (its path's) come from `trees`."""
    last = {b: len(path) for b, path in trees.path.items()}  # inputs: prompt + completion[:last selected position]
    continued = [b for b in sorted(last) if last[b] > 0]  # rows with continuation tokens
    cont_index = {b: j for j, b in enumerate(continued)}
    count, width = len(trees.prompts), trees.width[0]
    cont_width = max((last[b] for b in continued), default=0)
    prompt_ids = [[pad_id] * (width - len(p)) + list(p) for p in trees.prompts]
    prompt_mask = [[0] * (width - len(p)) + [1] * len(p) for p in trees.prompts]
    ids = [list(completions[b][: last[b]]) + [pad_id] * (cont_width - last[b]) for b in continued]
    mask = [[1] * last[b] + [0] * (cont_width - last[b]) for b in continued]
    offset = count * width  # continuation rows follow the prompt rows in the flat hidden states
    index = [
        trees.prompt_of_row[b] * width + width - 1 if t == 0 else offset + cont_index[b] * cont_width + t - 1
        for b, t in zip(rows.row.tolist(), rows.position.tolist(), strict=True)
    ]
    as_tensor = functools.partial(torch.tensor, dtype=torch.int64)
    batch = SharedPromptBatch(
        prompt_ids=as_tensor(prompt_ids).reshape(count, width).to(device),  # [P, Lp]
        prompt_mask=as_tensor(prompt_mask).reshape(count, width).to(device),  # [P, Lp]
        ids=as_tensor(ids).reshape(len(continued), cont_width).to(device),  # [B, Lc]
        mask=as_tensor(mask).reshape(len(continued), cont_width).to(device),  # [B, Lc]
        prompt_of_row=as_tensor([trees.prompt_of_row[b] for b in continued]).to(device),  # [B]
        tokens=torch.tensor(sum(map(len, trees.prompts)) + sum(last[b] for b in continued), device=device),
    )
    return batch, as_tensor(index).to(device)  # [k]


def shared_prompt_hidden(model: torch.nn.Module, batch: SharedPromptBatch | PrefixTreeBatch) -> torch.Tensor:
    """Final-norm hidden states of either layout, flattened: [P * Lp + B * Lc, D] for the two passes (module
    docstring), [P * W, D] for the prefix trees."""
    if isinstance(batch, PrefixTreeBatch):
        return prefix_tree_hidden(model, batch)
    decoder = decoder_stack(model)
    cache_arg = _cache_argument(type(decoder))
    dtype = decoder.get_input_embeddings().weight.dtype
    width, device = batch.prompt_ids.shape[1], batch.prompt_ids.device
    real = batch.prompt_mask.bool()  # [P, Lp]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # [Lp, Lp]
    prefix = DynamicCache()
    hidden = decoder(
        input_ids=batch.prompt_ids,
        position_ids=(batch.prompt_mask.cumsum(-1) - 1).clamp_min(0),
        attention_mask=additive_mask((causal[None] & real[:, None, :])[:, None], dtype),
        use_cache=True,
        **{cache_arg: prefix},
    ).last_hidden_state  # [P, Lp, D]
    flat = [hidden.reshape(-1, hidden.shape[-1])]  # [P * Lp, D]
    rows, cont_width = batch.ids.shape
    if rows and cont_width:
        cache = DynamicCache()
        for layer, states in enumerate(prefix.layers):  # each row continues from its prompt's keys/values
            cache.update(states.keys[batch.prompt_of_row], states.values[batch.prompt_of_row], layer)
        own = torch.ones(cont_width, cont_width, dtype=torch.bool, device=device).tril()  # [Lc, Lc]
        visible = torch.cat(
            [real[batch.prompt_of_row][:, None, :].expand(rows, cont_width, width), own.expand(rows, -1, -1)], dim=-1
        )  # [B, Lc, Lp + Lc]
        positions = batch.prompt_mask.sum(-1)[batch.prompt_of_row][:, None] + torch.arange(cont_width, device=device)
        hidden = decoder(
            input_ids=batch.ids,
            position_ids=positions,
            attention_mask=additive_mask(visible[:, None], dtype),
            use_cache=True,
            **{cache_arg: cache},
        ).last_hidden_state  # [B, Lc, D]
        flat.append(hidden.reshape(-1, hidden.shape[-1]))  # [B * Lc, D]
    return torch.cat(flat)  # [P * Lp + B * Lc, D]
