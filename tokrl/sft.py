"""Supervised warm start: a full fine-tune on the task's reference completions, cached in output_dir/sft.

A model without pretrained weights (the tiny one) never samples a correct answer, so RL would have no
signal. Before RL, `sft_steps` AdamW steps of cross-entropy on format_prompt(prompt) + reference + EOS
(loss on the completion tokens only, the prompt is context) make it partly right. The log-probs come from
the same path as the RL loss: final hidden states -> `linear_logprob` at the completion positions, so the
[B, L, V] logits are never built. Learning rate: linear warmup over the first 10% of steps, then linear
decay to 0.

With `sft_target_accuracy` > 0 the warm start stops early, at the first check (every `sft_check_every` steps)
where its greedy accuracy on the first `sft_check_size` training examples reaches the target. A fixed step count
stops each seed wherever its learning curve happens to be: on the tiny model, 1,000 steps left five seeds between
9% and 55% held-out, while 2,000 steps took them all to 87-97%, leaving RL little to do. Checks are greedy and draw
no randomness, so a run's warm start with the target is the run without it, cut short.

The result is written with `save_pretrained` (model and tokenizer) into `output_dir/sft/` (atomically,
with `sft_config.json` describing what made it) and RL reloads it by path. A later run or a resume with
the same settings finds it and skips the stage; different settings raise instead of mixing runs. Under
--overwrite (`replace`) a warm start made with other settings is rebuilt into a pending folder beside it
(`.sft.pending-<pid>`), which the run swaps in only once it has started (tokrl.run_dir.RunPlan): a run
that fails before that leaves the earlier run's warm start, and the adapters trained on it, as they were.
A run continued from another directory's checkpoint copies that run's warm start (`reuse_from`) when its
settings match, instead of training it again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from tokrl.atomic import copy_tree_atomic, fsync_tree
from tokrl.evaluate import evaluate
from tokrl.head_transform import logit_transform
from tokrl.models import hidden_states, lm_head_weight, load_model
from tokrl.rollout import encode_prompts, eos_token_ids, pack_sequences
from tokrl.tasks import Task
from tokrl_kernels import linear_logprob

SFT_DIR = "sft"
SFT_CONFIG = "sft_config.json"


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
            model, task, tokenizer=tokenizer, split="train", limit=self.size, batch_size=self.size,
            max_new_tokens=self.max_new_tokens, sampler=self.sampler,
        )  # fmt: skip
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
    warmup = max(1, steps // 10)
    schedule = lambda i: min((i + 1) / warmup, max(0.0, (steps - i) / max(steps - warmup, 1)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
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


def accuracy_target(config: Any) -> AccuracyTarget | None:
    """The warm start's stopping target from `config` (None when sft_target_accuracy is 0)."""
    if not config.sft_target_accuracy:
        return None
    sampler = config.generation.sampler
    if sampler == "tokrl-merged":  # the warm start trains the plain model: no adapter to merge, the engine serves it
        sampler = "tokrl"
    return AccuracyTarget(
        accuracy=config.sft_target_accuracy, every=config.sft_check_every, size=config.sft_check_size,
        max_new_tokens=config.generation.max_new_tokens, sampler=sampler,
    )  # fmt: skip


def sft_settings(config: Any) -> dict[str, Any]:
    """The config fields that determine the warm-started weights."""
    keys = ("model", "task", "task_options", "seed", "sft_steps", "sft_lr", "sft_batch_size")
    if config.sft_target_accuracy:  # only then, so warm starts cached before the target existed stay valid
        keys += ("sft_target_accuracy", "sft_check_every", "sft_check_size")
    return {k: getattr(config, k) for k in keys}


def _settings_of(folder: Path) -> dict[str, Any] | None:
    """The settings a finished warm start in `folder` was made with (None when there is none)."""
    path = folder / SFT_CONFIG
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"sft: cannot read {path} ({err}); delete {folder} to train the warm start again") from None
    return found.get("settings") if isinstance(found, dict) else None


def sft_stage(
    config: Any,
    task: Task,
    output_dir: Path,
    device: torch.device,
    log: Any = print,
    replace: bool = False,
    reuse_from: Path | None = None,
) -> Path:
    """Run (or reuse) the warm start of `config.model` on `device`; returns the directory RL loads from:
    output_dir/sft, or under `replace`, when output_dir/sft was made with other settings, the pending folder
    the new warm start went to (see the module doc). reuse_from: another run directory whose warm start is
    copied when it was made with the same settings."""
    target = Path(output_dir) / SFT_DIR
    settings = json.loads(json.dumps(sft_settings(config)))  # the JSON round trip normalises tuples and keys
    found = _settings_of(target)
    destination = target
    if found is not None:
        if found == settings:
            log(f"sft: reusing the warm start in {target}")
            return target
        if not replace:
            raise ValueError(
                f"sft: {target} was made with different settings ({found} vs {settings}); "
                "use another output_dir or pass --overwrite"
            )
        log(f"sft: {target} was made with other settings; --overwrite rebuilds it (swapped in once the run starts)")
        destination = target.with_name(f".sft.pending-{os.getpid()}")
        shutil.rmtree(destination, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if reuse_from is not None and _settings_of(Path(reuse_from) / SFT_DIR) == settings:
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete earlier attempt (no sft_config.json)
        copy_tree_atomic(Path(reuse_from) / SFT_DIR, destination, temp_prefix=".sft.")
        log(f"sft: copied the warm start of {reuse_from} to {destination}")
        return destination
    log(f"sft: warm start of {config.model!r}: {config.sft_steps} steps (cached in {target})")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=device)
    done = supervised_warm_start(
        model, tokenizer, task, steps=config.sft_steps, lr=config.sft_lr, batch_size=config.sft_batch_size,
        seed=config.seed, impl=config.impl, target=accuracy_target(config),
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=".sft.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        record = {"settings": settings, "losses": done.losses, "checks": done.checks, "seconds": seconds}
        (tmp / SFT_CONFIG).write_text(json.dumps(record, indent=2))
        fsync_tree(tmp)
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete earlier attempt (no sft_config.json)
        tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    first, last = (done.losses[0], done.losses[-1]) if done.losses else (float("nan"), float("nan"))
    reached = f" (check accuracy {done.checks[-1][1]:.3f})" if done.checks else ""
    log(f"sft: {done.steps} of {config.sft_steps} steps{reached}, loss {first:.3f} -> {last:.3f}, {seconds:.1f} s, "
        f"saved to {destination}")  # fmt: skip
    return destination
