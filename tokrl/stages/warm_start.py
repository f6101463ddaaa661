"""Supervised warm start: a full fine-tune on the task's reference completions.

A model without pretrained weights (the tiny one) never samples a correct answer, so RL would have no
signal. Before RL, `sft_steps` AdamW steps of cross-entropy on format_prompt(prompt) + reference + EOS
(loss on the completion tokens only, the prompt is context) make it partly right. The log-probs come from
the same path as the RL loss: final hidden states -> `linear_logprob` at the completion positions, so the
[B, L, V] logits are never built. Learning rate: linear warmup over the first 10% of steps, then linear
decay to 0. Where the result is kept (output_dir/sft, reused by later runs): `tokrl.run.warm_start`.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from tokrl.infra.lr_schedule import warm_start_scheduler
from tokrl.models.forward import hidden_states, lm_head_weight
from tokrl.models.head import logit_transform
from tokrl.sampler.rollout import encode_prompts
from tokrl.sampler.rows import eos_token_ids
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
) -> list[float]:
    """Fine-tune every weight of `model` in place; returns the loss of each step."""
    prompts, completions = sft_examples(task, tokenizer)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = warm_start_scheduler(optimizer, steps)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        pick = torch.randint(len(prompts), (batch_size,), generator=generator).tolist()  # [batch]
        loss = sft_loss(model, [prompts[i] for i in pick], [completions[i] for i in pick], tokenizer.pad_token_id, impl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
