"""Sampling completions: G per prompt for RL, one greedy for evaluation, through the sampler registry.

Prompts are token-id lists (the formatted prompt, plus a T-SPMO replay prefix when the algorithm hands one
out). A sampler (`sampler: auto | tokrl | hf`, tokrl/sampler/) continues them and returns each completion
cut after its first EOS (the EOS stays: it is a token the policy chose and the loss may select it); a row
without EOS ran to `max_new_tokens`. The tokrl sampler also returns each token's log-prob under
softmax(logits / T), which the trainer compares with the loss's log-probs.

After the algorithm has selected tokens, `gather_rows` concatenates the groups' selections into batch rows
(weights divided by the batch's total norm_units) and `pack_loss_batch` builds the one teacher-forced
forward batch the loss needs: only rows that own a selected token, each cut after its last selected
position, left-padded, plus the flat hidden-state index of every selected token.

Sampling draws from the global torch RNG; the trainer seeds it from (seed, step) just before, so a
resumed run samples exactly what an uninterrupted one does. top_k is off and the temperature/top_p given
here define the distribution the loss assumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from tokrl.algorithms import GroupSelection
from tokrl.sampler import AUTO, SamplingOptions, resolve_sampler
from tokrl.sampler.rows import cut_at_eos, eos_token_ids, left_pad, pad_token_id

__all__ = ["cut_at_eos", "eos_token_ids", "left_pad"]  # re-exported: they lived here before the samplers


@dataclass
class Rollout:
    """Rows of a generate call, in input order.

    prompts: per row the token ids generation continued from (prompt + prefix)
    completions: per row the new token ids (EOS kept, no padding)
    seconds: wall time of generate; generated_tokens: sum of completion lengths
    logprobs: per row the log-prob of each completion token under softmax(logits / T) at sampling time
        (before top-p truncation), aligned with `completions`; None when the sampler gives none (hf)
    sampler: the sampler that ran ("tokrl" | "hf")
    sampler_graphed: share of the tokrl sampler's decode steps replayed from a CUDA graph (below 1 when a
        capture failed); None where no graphs are used (CPU, hf)
    """

    prompts: list[list[int]]
    completions: list[list[int]]
    seconds: float
    generated_tokens: int
    logprobs: list[list[float]] | None = None
    sampler: str = ""
    sampler_graphed: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)


def set_training(model: torch.nn.Module, mode: bool) -> None:
    """`model.train(mode)`, skipped when every module is already in that mode: the call sets the flag on each
    module through nn.Module.__setattr__ (about 0.3 ms on the tiny model), and a step switches modes
    several times, mostly to the mode the model is already in."""
    if any(module.training != mode for module in model.modules()):
        model.train(mode)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt text (the tokenizer's special tokens, e.g. a BOS, included)."""
    return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int | None = None,
    num_generations: int = 1,
    sampler: str = AUTO,
) -> Rollout:
    """Continue every prompt row `num_generations` times (eval mode: no dropout); rows g*G .. g*G + G - 1
    of the result continue prompt g. Each completion is cut at EOS.

    Sampling (do_sample=True) draws from softmax(logits / temperature) restricted to the top_p nucleus;
    do_sample=False is greedy. `batch_size` caps the rows per sampler call (all at once when None; at least
    one prompt's G rows). `sampler`: auto | tokrl | hf (tokrl/sampler/registry.py).
    """
    options = SamplingOptions(do_sample=do_sample, temperature=temperature, top_p=top_p)
    chosen = resolve_sampler(sampler, model)
    eos, pad = eos_token_ids(tokenizer), pad_token_id(tokenizer)
    per_call = max((batch_size or max(len(prompts) * num_generations, 1)) // num_generations, 1)  # prompts
    completions: list[list[int]] = []
    logprobs: list[list[float]] | None = []
    was_training = model.training
    set_training(model, False)
    start = time.perf_counter()
    try:
        for lo in range(0, len(prompts), per_call):
            tokens, logp = chosen.generate(
                model, prompts[lo : lo + per_call], num_generations=num_generations,
                max_new_tokens=max_new_tokens, options=options, eos_ids=eos, pad_id=pad,
            )  # fmt: skip
            completions.extend(tokens)
            logprobs = logprobs + logp if logprobs is not None and logp is not None else None
    finally:
        set_training(model, was_training)
    return Rollout(
        prompts=[list(p) for p in prompts for _ in range(num_generations)],
        completions=completions,
        seconds=time.perf_counter() - start,
        generated_tokens=sum(len(c) for c in completions),
        logprobs=logprobs,
        sampler=chosen.name,
        sampler_graphed=getattr(chosen, "graphed_share", None),
    )


def concat_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """One Rollout of several calls' rows, in order (seconds and tokens add up)."""
    return Rollout(
        prompts=[row for part in parts for row in part.prompts],
        completions=[row for part in parts for row in part.completions],
        seconds=sum(part.seconds for part in parts),
        generated_tokens=sum(part.generated_tokens for part in parts),
        logprobs=None if any(p.logprobs is None for p in parts) else [r for p in parts for r in p.logprobs],
        sampler=parts[0].sampler if parts else "",
        sampler_graphed=min((p.sampler_graphed for p in parts if p.sampler_graphed is not None), default=None),
    )


def sample_groups(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    num_generations: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    sampler: str = AUTO,
) -> Rollout:
    """G sampled completions per prompt: rows g*G .. g*G + G - 1 belong to prompt g (the tokrl sampler
    prefills each prompt once and shares its cache across the G rows)."""
    return generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
        top_p=top_p, num_generations=num_generations, sampler=sampler,
    )  # fmt: skip


def decode(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token-id rows, special tokens (EOS) dropped: what reward functions see.

    Each distinct row is decoded once (a group's completions often repeat, e.g. a short correct answer)."""
    keys = [tuple(r) for r in rows]
    distinct = list(dict.fromkeys(keys))
    decoded = tokenizer.batch_decode([list(k) for k in distinct], skip_special_tokens=True)
    texts = dict(zip(distinct, decoded, strict=True))
    return [texts[k] for k in keys]


@dataclass
class PackedBatch:
    """Prompt + continuation rows, left-padded as one sequence each, for a teacher-forced forward.

    input_ids, attention_mask [B, L]; start [B] int64: the flat row (b * L + column) of the hidden state
    that predicts continuation token 0 of row b, so token t of row b is predicted at flat row start[b] + t.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: torch.Tensor


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
) -> PackedBatch:
    """Rows prompt_b + continuation_b, left-padded (ends aligned, so L is the longest row and no longer).

    The continuation holds the tokens that must be *inputs*: to score completion tokens 0..t the forward
    needs completion[:t] (the hidden state at the last prompt token predicts token 0).
    """
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    width = max((len(row) for row in rows), default=0)
    # The same tensors as `left_pad`, which writes them row by row; built as padded Python lists and converted
    # in one call each, since a per-row tensor write costs more than a row's few tokens.
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], dtype=torch.int64)  # [B, L]
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.int64)  # [B, L]
    start = [b * width + (width - len(row)) + len(p) - 1 for b, (row, p) in enumerate(zip(rows, prompts, strict=True))]
    ids, mask = ids.reshape(len(rows), width).to(device), mask.reshape(len(rows), width).to(device)  # [B, L] ([0, 0])
    return PackedBatch(ids, mask, torch.tensor(start, dtype=torch.int64, device=ids.device))  # start: [B]


@dataclass
class LossRows:
    """The batch's selected tokens, aligned [k] tensors; `row` indexes the P*G rollout rows."""

    row: torch.Tensor
    position: torch.Tensor
    token: torch.Tensor
    advantage: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.row.numel())

    def select(self, keep: torch.Tensor) -> LossRows:
        """The rows at positions `keep` ([k'] int64), in that order."""
        return LossRows(self.row[keep], self.position[keep], self.token[keep], self.advantage[keep], self.weight[keep])


def gather_rows(selections: list[GroupSelection], group_size: int, units: float | None = None) -> LossRows:
    """Concatenate the groups' selections; weights divided by max(units, 1), where units is the batch's
    total norm_units (default: these selections' own; a multi-process run passes the global total)."""
    units = max(sum(s.norm_units for s in selections) if units is None else units, 1.0)
    offsets = torch.tensor([g * group_size for g, s in enumerate(selections) for _ in range(len(s))], dtype=torch.int64)
    return LossRows(
        row=torch.cat([s.completion for s in selections]) + offsets,  # [k] rollout row of each token
        position=torch.cat([s.position for s in selections]),  # [k]
        token=torch.cat([s.token for s in selections]),  # [k]
        advantage=torch.cat([s.advantage for s in selections]).float(),  # [k] fp32
        weight=torch.cat([s.weight for s in selections]).float() / units,  # [k] fp32
    )


def pack_loss_batch(
    prompts: list[list[int]], completions: list[list[int]], rows: LossRows, pad_id: int, device: torch.device
) -> tuple[PackedBatch, torch.Tensor]:
    """The forward batch (only rollout rows with a selected token, each cut after its last selected
    position) and the flat hidden-state index of every selected token: [k] int64."""
    active, packed_row = torch.unique(rows.row, return_inverse=True)  # [B'], [k]
    last = torch.zeros(len(active), dtype=torch.int64).scatter_reduce(0, packed_row, rows.position, "amax")  # [B']
    keep = active.tolist()
    inputs = [completions[b][: int(n)] for b, n in zip(keep, last.tolist(), strict=True)]
    batch = pack_sequences([prompts[b] for b in keep], inputs, pad_id, device)
    index = batch.start[packed_row.to(device)] + rows.position.to(device)  # [k]
    return batch, index
