"""Stage 1 of a step, `collect(step) -> RolloutBatch`: this rank's prompts, sampled G times each, scored and grouped.

    prompts of the step (a seeded permutation of the train split every epoch; this rank's contiguous slice)
    -> rollout_prefix per prompt (T-SPMO replay; [] otherwise), drawn from the prompt's stream
    -> G completions per prompt (the `sampler`; rows p*G .. p*G + G - 1 continue prompt p)
    -> rewards (Task.reward on prefix + completion text) -> one Group per prompt

A RewardError (the reward raised or returned a non-finite value) on any rank is raised on every rank right after
scoring (`fail_together`: one all_reduce of a flag in a multi-process run), so all ranks stop at the same step,
before anything of it is applied, and can save the last good step together.

Randomness, all seeded from (seed, step), so a resumed run repeats an uninterrupted one: prompt j of a step (its
index in the step's global prompt list) draws its replay prefix, and then its token selection, from a stream
seeded from (seed, step, j). Sampling draws from the global RNG, seeded from (seed, step) and the rank for one
sampler call per process, or from (seed, step, j) per prompt with `sample_per_prompt` (then N processes sample
exactly what one process samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from tokrl.algorithms import Algorithm, Group
from tokrl.config.schema import TrainConfig
from tokrl.infra.distributed import LaunchEnv, fail_together
from tokrl.infra.memory import peak_memory_mib
from tokrl.infra.seeding import step_seed, stream_seed
from tokrl.sampler.rollout import Rollout, concat_rollouts, decode, encode_prompts, sample_groups
from tokrl.tasks import Task
from tokrl.tasks.base import RewardError


@dataclass
class RolloutBatch:
    """This rank's share of one step's rollouts.

    groups: one scored Group per prompt (its G completions, their rewards, the prompt key)
    prefixes: per prompt, the replay prefix its completions continue ([] without replay)
    streams: per prompt, the generator its prefix was drawn from; the selection stage continues it
    rollout: the sampler's rows (prompts [P*G] = prompt + prefix ids, completions [P*G]), its log-probs,
        seconds, tokens and graphed share
    peak_mem_mib: this rank's peak memory since the step began (sampling's)
    """

    groups: list[Group]
    prefixes: list[list[int]]
    streams: list[torch.Generator]
    rollout: Rollout
    peak_mem_mib: float

    @property
    def prompts(self) -> list[list[int]]:
        return self.rollout.prompts

    @property
    def completions(self) -> list[list[int]]:
        return self.rollout.completions


class PromptOrder:
    """The step's prompts: consecutive slices of a fresh seeded permutation of the train split every epoch."""

    def __init__(self, data: datasets.Dataset, per_step: int, seed: int, launch: LaunchEnv) -> None:
        self.data, self.per_step, self.seed = data, per_step, seed
        per_rank = per_step // launch.world_size
        self.local = range(launch.rank * per_rank, (launch.rank + 1) * per_rank)  # this rank's slice of a step
        self._orders: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        """The train-split order of `epoch` (cached: a step reads at most two epochs)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(step_seed(self.seed, -1 - epoch))
            self._orders = {epoch: torch.randperm(len(self.data), generator=generator).tolist()} | {
                e: o for e, o in self._orders.items() if e == epoch - 1
            }
        return self._orders[epoch]

    def examples(self, step: int) -> list[dict[str, Any]]:
        """Every prompt of `step` (the global list), as rows of the train split."""
        n = len(self.data)
        picks = [divmod(step * self.per_step + j, n) for j in range(self.per_step)]
        columns = self.data[[self.permutation(epoch)[pos] for epoch, pos in picks]]  # one read, not per row
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class Collector:
    """Samples, scores and groups the completions of this rank's prompts of a step (module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        algorithm: Algorithm,
        config: TrainConfig,
        launch: LaunchEnv,
        device: torch.device,
    ) -> None:
        self.model, self.tokenizer, self.task, self.algorithm = model, tokenizer, task, algorithm
        self.config, self.launch, self.device = config, launch, device
        self.order = PromptOrder(task.split("train"), config.prompts_per_step, config.seed, launch)

    def collect(self, step: int) -> RolloutBatch:
        c, g, local = self.config, self.config.generation.num_generations, self.order.local
        streams = [torch.Generator().manual_seed(stream_seed(c.seed, step, 2 * j + 2)) for j in local]
        examples = self.order.examples(step)[local.start : local.stop]
        keys = [self.task.render_prompt(ex["prompt"], self.tokenizer) for ex in examples]
        prompt_ids = encode_prompts(self.tokenizer, keys)
        prefixes = [self.algorithm.rollout_prefix(key, gen) for key, gen in zip(keys, streams, strict=True)]
        rows = [p + x for p, x in zip(prompt_ids, prefixes, strict=True)]
        out = self._sample(step, rows)
        texts = decode(self.tokenizer, [prefixes[i // g] + comp for i, comp in enumerate(out.completions)])
        columns = {col: [ex[col] for ex in examples for _ in range(g)] for col in self.order.data.column_names}
        with fail_together(RewardError):  # a reward error on any rank stops every rank here, before any collective
            rewards = self.task.reward(texts, **columns)  # checked there: finite numbers or None
        groups = [
            Group(out.completions[i * g : (i + 1) * g], rewards[i * g : (i + 1) * g], keys[i])
            for i in range(len(examples))
        ]
        return RolloutBatch(groups, prefixes, streams, out, peak_memory_mib(self.device))

    def _sample(self, step: int, rows: list[list[int]]) -> Rollout:
        c, g = self.config, self.config.generation.num_generations
        options = {
            "max_new_tokens": c.generation.max_new_tokens,
            "temperature": c.generation.temperature,
            "top_p": c.generation.top_p,
            "sampler": c.generation.sampler,
        }
        if not c.sample_per_prompt:
            torch.manual_seed(stream_seed(c.seed, step, -self.launch.rank))  # rank 0: step_seed(seed, step)
            return sample_groups(self.model, self.tokenizer, rows, g, **options)
        parts = []  # prompt j's completions depend on (seed, step, j) only, not on the rank
        for j, row in zip(self.order.local, rows, strict=True):
            torch.manual_seed(stream_seed(c.seed, step, 2 * j + 1))  # the sampler draws from the global RNG
            parts.append(sample_groups(self.model, self.tokenizer, [row], g, **options))
        return concat_rollouts(parts)
