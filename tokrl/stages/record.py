"""A train step's metrics record: what `metrics.jsonl` and the reporters get for every step.

Keys (all per step):
    reward_mean, reward_std      over the valid rewards of the batch (None rewards left out)
    frac_zero_std                groups whose valid rewards are all equal (no learning signal)
    completion_len               mean new tokens per completion; prefix_len: mean replay prefix length
    selected_tokens              loss rows the algorithm selected (before any forward)
    loss, grad_norm, clip_frac   the optimised loss (last iteration), pre-clip gradient norm, PPO clipped rows
    kl                           mean k3 KL to the adapter-free model over the loss rows (beta > 0 only)
    forward_tokens               tokens the loss forward ran over (prompt + completion up to each row's last
                                 selected position, all micro-batches; what the update's activations scale with)
    gen_peak_mem_mib             peak memory of sampling the step's rollouts
    update_peak_mem_mib          peak memory of the update: reference log-probs, loss forward(s), backward(s),
                                 optimiser step (reset just before it)
    peak_mem_mib                 the larger of the two: the step's peak
Memory: `tokrl.infra.memory` (the CUDA allocator's peak, or the process's peak resident set on CPU).
In a multi-process run every value is over the global batch (rank 0 writes; step_time_s is rank 0's,
gen_tokens_per_s is all ranks' tokens over the slowest rank's generate time, memory the largest rank's).
    lr, step_time_s, gen_tokens_per_s
    gen_seconds, update_seconds  the step's rollout half (sampling, rewards, selection) and optimisation half
                                 (loss forward/backward, optimiser); together about step_time_s
    sampler_graphed              share of the tokrl sampler's decode steps replayed from a CUDA graph (the
                                 lowest rank's); below 1 means a capture failed and those steps ran eagerly
                                 (~20x slower, with a warning each time); None on CPU and with hf
Sampler fidelity, on the tokens the loss selected (None when the sampler gives no log-probs, e.g. hf):
    sampler_logp_gap_mean, sampler_logp_gap_p95   mean and 95th percentile of |logp_sampler - logp_loss|
    sampler_ratio_outside   fraction of exp(logp_loss - logp_sampler) outside [0.9, 1.1]
    logp_sampler is log softmax(logits / T) of the token when it was drawn (eval mode, no dropout);
    logp_loss is the loss's first-iteration log-prob of the same token from the same weights. The loss
    forward runs in train mode, so with lora_dropout > 0 the gap is NOT zero even for an exact sampler: it
    measures dropout noise plus any sampler error (bf16 rounding, a different attention kernel). With
    lora_dropout = 0 in fp32 it is rounding only (~1e-6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from tokrl.infra import distributed

if TYPE_CHECKING:
    from tokrl.sampler.rollout import Rollout
    from tokrl.stages.select import Selection
    from tokrl.stages.update import UpdateResult


def step_record(
    step: int, rollout: Rollout, chosen: Selection, update: UpdateResult, start: float, gen_seconds: float
) -> dict[str, Any]:
    """The metrics record of 0-based `step` (module docstring), over the global batch: `rollout` is this rank's
    sampling, `chosen` every rank's shard, `update` this rank's update (its statistics are already global).
    `start`: the step's perf_counter start; `gen_seconds`: its rollout half. A collective (the sampler gaps)."""
    shards, everyone = chosen.shards, chosen.groups
    gaps = distributed.all_gather_object(sampler_logp_gaps(rollout.logprobs, chosen.rows, update.logp))
    mean, std = reward_stats([r for group in everyone for r in group.rewards])
    completions = [comp for group in everyone for comp in group.completions]
    prefix_lens = [n for shard in shards for n in shard.prefix_lens]
    zero_std = [z for shard in shards for z in shard.zero_std]
    gen_peak = max(s.gen_peak_mem_mib for s in shards)
    return {
        "kind": "train",
        "step": step + 1,
        "reward_mean": mean,
        "reward_std": std,
        "frac_zero_std": sum(zero_std) / len(zero_std),
        "completion_len": sum(len(comp) for comp in completions) / len(completions),
        "prefix_len": sum(prefix_lens) / len(prefix_lens),
        "selected_tokens": chosen.selected,
        **update.stats(),
        "lr": update.lr,
        **sampler_gap_stats([g for shard in gaps for g in shard] if None not in gaps else None),
        "gen_seconds": gen_seconds,
        "update_seconds": update.seconds,
        "step_time_s": time.perf_counter() - start,
        "gen_tokens_per_s": sum(s.tokens for s in shards) / max(max(s.seconds for s in shards), 1e-9),
        "sampler_graphed": min((s.graphed for s in shards if s.graphed is not None), default=None),
        "gen_peak_mem_mib": gen_peak,
        "peak_mem_mib": max(gen_peak, update.peak_mem_mib),
    }


def reward_stats(rewards: Sequence[float | None]) -> tuple[float, float]:
    """(mean, population std) of the valid rewards; (nan, nan) when there are none."""
    valid = [float(r) for r in rewards if r is not None]
    if not valid:
        return math.nan, math.nan
    try:
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((r - mean) ** 2 for r in valid) / len(valid))
        if math.isfinite(mean) and math.isfinite(std):
            return mean, std
    except OverflowError:
        pass
    # Rewards near the float limit (+-1e308) overflow the plain sums: the same statistics on rewards / scale.
    scale = max(abs(r) for r in valid)
    scaled = [r / scale for r in valid]
    mean = math.fsum(scaled) / len(scaled)
    return mean * scale, math.sqrt(math.fsum((r - mean) ** 2 for r in scaled) / len(scaled)) * scale


RATIO_BAND = (0.9, 1.1)


def sampler_logp_gaps(
    sampler_logp: Sequence[Sequence[float]] | None, rows: Any, loss_logp: torch.Tensor
) -> list[float] | None:
    """|logp_sampler - logp_loss| per selected token: sampler_logp[row][position] against loss_logp [k]
    (aligned with the LossRows `rows`); None when the sampler gave no log-probs."""
    if sampler_logp is None:
        return None
    if len(rows) == 0:
        return []
    sampled = torch.tensor([sampler_logp[b][t] for b, t in zip(rows.row.tolist(), rows.position.tolist(), strict=True)])
    return (loss_logp.double() - sampled.double()).tolist()  # [k] signed: logp_loss - logp_sampler


def sampler_gap_stats(gaps: Sequence[float] | None) -> dict[str, float | None]:
    """The sampler fidelity metrics (module docstring) from signed gaps logp_loss - logp_sampler."""
    if not gaps:
        return {"sampler_logp_gap_mean": None, "sampler_logp_gap_p95": None, "sampler_ratio_outside": None}
    delta = torch.tensor(list(gaps), dtype=torch.float64)  # [k]
    ratio = delta.exp()  # [k]
    outside = (ratio < RATIO_BAND[0]) | (ratio > RATIO_BAND[1])  # [k]
    return {
        "sampler_logp_gap_mean": float(delta.abs().mean()),
        "sampler_logp_gap_p95": float(delta.abs().quantile(0.95)),
        "sampler_ratio_outside": float(outside.double().mean()),
    }
