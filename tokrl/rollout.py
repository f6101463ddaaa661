"""Sampling completions with Hugging Face `generate`: G per prompt for RL, one greedy for evaluation.

Prompts are token-id lists (the formatted prompt, plus a T-SPMO replay prefix when the algorithm hands one
out). They are left-padded so every row's last prompt token sits at the same column and new tokens append
on the right; the attention mask marks the pads. A completion is what `generate` appended, cut after the
first EOS (the EOS stays: it is a token the policy chose and the loss may select it). A row without EOS ran
to `max_new_tokens`; `generate` only fills pads after a row's EOS, so nothing else is stripped.

After the algorithm has selected tokens, `gather_rows` concatenates the groups' selections into batch rows
(weights divided by the batch's total norm_units) and `pack_loss_batch` builds the one teacher-forced
forward batch the loss needs: only rows that own a selected token, each cut after its last selected
position, left-padded, plus the flat hidden-state index of every selected token.

Sampling draws from the global torch RNG; the trainer seeds it from (seed, step) just before, so a
resumed run samples exactly what an uninterrupted one does. The sampler's settings are passed as a fresh
`transformers.GenerationConfig`, so a checkpoint's own generation defaults (top_k, repetition penalty)
never leak in: top_k=0 and the temperature/top_p given here define the distribution the loss assumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import PreTrainedTokenizerBase

from tokrl.algorithms import GroupSelection


@dataclass
class Rollout:
    """Rows of a generate call, in input order.

    prompts: per row the token ids generation continued from (prompt + prefix)
    completions: per row the new token ids (EOS kept, no padding)
    seconds: wall time of generate; generated_tokens: sum of completion lengths
    """

    prompts: list[list[int]]
    completions: list[list[int]]
    seconds: float
    generated_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt text (the tokenizer's special tokens, e.g. a BOS, included)."""
    return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]


def eos_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; completions could never end")
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id rows to one length: (input_ids [B, L] int64, attention_mask [B, L] int64)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)  # [B, L]
    mask = torch.zeros((len(rows), width), dtype=torch.int64)  # [B, L]
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.int64)  # [len]
            mask[b, width - len(row) :] = 1  # [len]
    return ids.to(device), mask.to(device)


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """tokens up to and including the first EOS (all of them when there is none)."""
    out: list[int] = []
    for t in tokens:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


def _hf_generation_config(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float
) -> HFGenerationConfig:
    eos = eos_token_ids(tokenizer)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
    return HFGenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        use_cache=True,
        do_sample=do_sample,
        **sampling,
    )


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
) -> Rollout:
    """Continue every prompt row (eval mode: no dropout) and return its completion, cut at EOS.

    Sampling (do_sample=True) draws from softmax(logits / temperature) restricted to the top_p nucleus;
    do_sample=False is greedy. Rows run in chunks of `batch_size` (all at once when None).
    """
    was_training = model.training
    model.eval()
    config = _hf_generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p)
    eos = eos_token_ids(tokenizer)
    device = next(model.parameters()).device
    chunk = batch_size or max(len(prompts), 1)
    completions: list[list[int]] = []
    start = time.perf_counter()
    try:
        for lo in range(0, len(prompts), chunk):
            rows = prompts[lo : lo + chunk]
            ids, mask = left_pad(rows, config.pad_token_id, device)  # [b, P], [b, P]
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # [b, P + n]
            new = out[:, ids.shape[1] :].tolist()  # b x n token ids
            completions.extend(cut_at_eos(row, eos) for row in new)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return Rollout(
        prompts=[list(p) for p in prompts],
        completions=completions,
        seconds=seconds,
        generated_tokens=sum(len(c) for c in completions),
    )


def concat_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """One Rollout of several calls' rows, in order (seconds and tokens add up)."""
    return Rollout(
        prompts=[row for part in parts for row in part.prompts],
        completions=[row for part in parts for row in part.completions],
        seconds=sum(part.seconds for part in parts),
        generated_tokens=sum(part.generated_tokens for part in parts),
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
) -> Rollout:
    """G sampled completions per prompt: rows g*G .. g*G + G - 1 belong to prompt g."""
    rows = [list(p) for p in prompts for _ in range(num_generations)]
    return generate(
        model, tokenizer, rows, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p
    )


def decode(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token-id rows, special tokens (EOS) dropped: what reward functions see."""
    return tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True)


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
    ids, mask = left_pad(rows, pad_id, device)  # [B, L], [B, L]
    width = ids.shape[1]
    start = [b * width + (width - len(row)) + len(p) - 1 for b, (row, p) in enumerate(zip(rows, prompts, strict=True))]
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
    return LossRows(
        row=torch.cat([s.completion + g * group_size for g, s in enumerate(selections)]),  # [k]
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
