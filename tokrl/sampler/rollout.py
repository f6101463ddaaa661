"""Sampling completions: G per prompt for RL, one greedy for evaluation, through the sampler registry; prompt
text to token ids and completion ids back to text.

Prompts are token-id lists (the formatted prompt, plus a T-SPMO replay prefix when the algorithm hands one
out). A sampler (`sampler: auto | tokrl | hf`, tokrl/sampler/) continues them and returns each completion
cut after its first EOS (the EOS stays: it is a token the policy chose and the loss may select it); a row
without EOS ran to `max_new_tokens`. The tokrl sampler also returns each token's log-prob under
softmax(logits / T), which the trainer compares with the loss's log-probs.

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

from tokrl.models.forward import set_training
from tokrl.sampler import AUTO, SamplingOptions, resolve_sampler
from tokrl.sampler.rows import eos_token_ids, pad_token_id


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
                model,
                prompts[lo : lo + per_call],
                num_generations=num_generations,
                max_new_tokens=max_new_tokens,
                options=options,
                eos_ids=eos,
                pad_id=pad,
            )
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
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        num_generations=num_generations,
        sampler=sampler,
    )


def decode(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token-id rows, special tokens (EOS) dropped: what reward functions see.

    Each distinct row is decoded once (a group's completions often repeat, e.g. a short correct answer)."""
    keys = [tuple(r) for r in rows]
    distinct = list(dict.fromkeys(keys))
    decoded = tokenizer.batch_decode([list(k) for k in distinct], skip_special_tokens=True)
    texts = dict(zip(distinct, decoded, strict=True))
    return [texts[k] for k in keys]
