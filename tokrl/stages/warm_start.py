"""Supervised warm start: a full fine-tune on the task's reference completions.

A model without pretrained weights (the tiny one) never samples a correct answer, so RL would have no
signal. Before RL, `sft_steps` AdamW steps of cross-entropy on format_prompt(prompt) + reference + EOS
(loss on the completion tokens only, the prompt is context) make it partly right. The log-probs come from
the same path as the RL loss: final hidden states -> `linear_logprob` at the completion positions, so the
[B, L, V] logits are never built. Learning rate: linear warmup over the first 10% of steps, then linear
decay to 0. Where the result is kept (output_dir/sft, reused by later runs): `tokrl.run.warm_start`.

With an `AccuracyTarget` the warm start stops early, at the first check (every `every` steps) where its greedy
accuracy on the first `size` training examples reaches the target. A fixed step count stops each seed wherever its
learning curve happens to be: on the tiny model, 1,000 steps left five seeds between 9% and 55% held-out, while
2,000 steps took them all to 87-97%, leaving RL little to do. Checks are greedy and draw no randomness, so a warm
start with a target is the one without it, cut short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from tokrl.infra.lr_schedule import warm_start_scheduler
from tokrl.models.forward import hidden_states, lm_head_weight
from tokrl.models.head import logit_transform
from tokrl.sampler.rollout import encode_prompts
from tokrl.sampler.rows import eos_token_ids
from tokrl.stages.evaluate import evaluate
from tokrl.stages.select import pack_sequences
from tokrl.tasks import Task
from tokrl_kernels import linear_logprob


def sft_examples(task: Task, tokenizer: PreTrainedTokenizerBase) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids + EOS) for every training example."""
    data = task.split("train")
    rows = data.to_list()
    prompts = encode_prompts(tokenizer, [task.render_prompt(r["prompt"], tokenizer) for r in rows])
    texts = [task.reference_completion(r) for r in rows]
    eos = eos_token_ids(tokenizer)[0]
    completions = [list(ids) + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return prompts, completions


def sft_loss(
    model: torch.nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    impl: str = "auto",
) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens given their prompts (scalar fp32)."""
    device = next(model.parameters()).device
    batch = pack_sequences(prompts, [c[:-1] for c in completions], pad_id, device)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.int64, device=device)  # [B]
    row = torch.repeat_interleave(torch.arange(len(completions), device=device), lengths)  # [k]
    offset = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )  # [k] position within its completion
    index = batch.start[row] + offset  # [k] flat hidden rows
    targets = torch.tensor([t for c in completions for t in c], dtype=torch.int64, device=device)  # [k]
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)  # [B, L, D]
    flat = hidden.reshape(-1, hidden.shape[-1])  # [B * L, D]
    head_kwargs = logit_transform(model).kernel_kwargs()  # logit scale / soft-cap, {} for a plain head
    logp = linear_logprob(flat, lm_head_weight(model), targets, index, impl=impl, **head_kwargs)  # [k] fp32
    return -logp.mean()


@dataclass(frozen=True)
class AccuracyTarget:
    """Stop the warm start once greedy accuracy on the first `size` training examples reaches `accuracy`,
    checked every `every` steps (completions of up to `max_new_tokens`, sampled by `sampler`)."""

    accuracy: float
    every: int
    size: int
    max_new_tokens: int
    sampler: str = "auto"

    def check(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task) -> float:
        """Greedy accuracy@1 on the check examples (the model is left in the mode it was in)."""
        result = evaluate(
            model,
            task,
            tokenizer=tokenizer,
            split="train",
            limit=self.size,
            batch_size=self.size,
            max_new_tokens=self.max_new_tokens,
            sampler=self.sampler,
        )
        return float(result["accuracy"])


@dataclass
class WarmStartLog:
    """What a warm start did: the loss of each step and the (step, accuracy) of each target check."""

    losses: list[float] = field(default_factory=list)
    checks: list[tuple[int, float]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)


def supervised_warm_start(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    impl: str = "auto",
    target: AccuracyTarget | None = None,
) -> WarmStartLog:
    """Fine-tune every weight of `model` in place for `steps` steps, or until `target` is reached."""
    prompts, completions = sft_examples(task, tokenizer)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = warm_start_scheduler(optimizer, steps)
    model.train()
    log = WarmStartLog()
    for step in range(1, steps + 1):
        pick = torch.randint(len(prompts), (batch_size,), generator=generator).tolist()  # [batch]
        loss = sft_loss(model, [prompts[i] for i in pick], [completions[i] for i in pick], tokenizer.pad_token_id, impl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        log.losses.append(float(loss.detach()))
        if target is not None and step % target.every == 0 and step < steps:
            log.checks.append((step, target.check(model, tokenizer, task)))
            if log.checks[-1][1] >= target.accuracy:
                break
    model.eval()
    return log
