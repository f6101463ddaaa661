"""Greedy evaluation: accuracy@1 on a task split.

accuracy@1 = fraction of examples whose single greedy completion scores reward >= 1.0 (a correct answer
under the task's verifiable reward; a None reward counts as wrong). Prompts are decoded in left-padded
batches with the model in eval mode; no randomness is drawn, so evaluating mid-run does not change a run.
`sharded=True` in a multi-process run: each rank decodes a contiguous slice of the examples and the
counts are summed over ranks, so every rank returns the accuracy of the whole split, and a reward error on one
rank is raised on every rank (`tokrl.infra.distributed.fail_together`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from tokrl.infra import distributed
from tokrl.models.adapters import load_with_adapter
from tokrl.sampler.rollout import decode, encode_prompts, generate
from tokrl.tasks import Task, get_task
from tokrl.tasks.base import RewardError

CORRECT = 1.0  # reward at or above which a completion counts as correct


def evaluate(
    model: torch.nn.Module | str,
    task: Task | str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 200,
    adapter: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    task_options: dict[str, Any] | None = None,
    examples: int = 0,
    sharded: bool = False,
    sampler: str = "auto",
) -> dict[str, Any]:
    """Greedy accuracy@1 of `model` on `task`'s `split` (the first `limit` examples when given).

    model: a loaded causal LM (then `tokenizer` is required) or a name/path for `tokrl.models.loading.load_model`,
    optionally with a LoRA `adapter` directory. task: a Task or a registry name (with `task_options`).
    Returns {"accuracy", "n", "mean_reward", "seconds"} plus "examples" (the first `examples`
    (prompt, completion, reward) triples) when asked. `sampler`: auto | tokrl | hf (tokrl/sampler/).
    """
    if isinstance(task, str):
        task = get_task(task, **(task_options or {}))
    if isinstance(model, str):
        model, tokenizer = load_with_adapter(model, adapter, dtype, device)
    if tokenizer is None:
        raise ValueError("evaluate: pass the tokenizer with a loaded model")
    data = task.split(split)
    if limit:
        data = data.select(range(min(limit, len(data))))
    if sharded and distributed.world_size() > 1:
        rank, world = distributed.rank(), distributed.world_size()
        data = data.select(range(rank * len(data) // world, (rank + 1) * len(data) // world))
    columns = data.to_dict()  # column -> list, aligned with the rows
    prompts = encode_prompts(tokenizer, [task.render_prompt(p, tokenizer) for p in columns["prompt"]])
    start = time.perf_counter()
    out = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        batch_size=batch_size,
        sampler=sampler,
    )
    texts = decode(tokenizer, out.completions)
    with distributed.fail_together(RewardError) if sharded else nullcontext():  # every rank raises together
        rewards = task.reward(texts, **columns)
    correct = [r is not None and r >= CORRECT for r in rewards]
    valid = [r for r in rewards if r is not None]
    counts = [float(sum(correct)), float(len(correct)), float(sum(valid)), float(len(valid))]
    if sharded:
        counts = distributed.all_reduce_sum(torch.tensor(counts, dtype=torch.float64)).tolist()
    n_correct, n, reward_sum, n_valid = counts
    result: dict[str, Any] = {
        "accuracy": n_correct / max(n, 1),
        "n": int(n),
        "mean_reward": reward_sum / max(n_valid, 1),
        "seconds": time.perf_counter() - start,
    }
    if examples:
        result["examples"] = list(zip(columns["prompt"][:examples], texts[:examples], rewards[:examples], strict=True))
    return result
