"""The one RL loop shared by every algorithm.

One step (everything random is seeded from (seed, step), so a resumed run repeats an uninterrupted one):
    prompts (task train split, a seeded permutation per epoch)
    -> rollout_prefix per prompt (T-SPMO replay; [] otherwise) -> G sampled completions per prompt
    -> rewards (Task.reward on prefix + completion text) -> Group per prompt
    -> Algorithm.process_group: selected (completion, position, token, advantage, weight); observe
    -> packed forwards (micro-batches of `loss_micro_batch` rows, or one) of the completions that own a
       selected token, each cut after its last selected position, to the final hidden states (train mode:
       LoRA dropout is active in the loss forward)
    -> linear_pg_loss on the selected rows of the flattened hidden states, temperature = the sampling
       temperature (so pi_theta is the distribution the tokens were drawn from), weights divided by the
       batch's total norm_units -> backward -> gradient clipping -> AdamW and scheduler step
       (tokrl/policy_update.py, which also holds num_iterations > 1 and the beta > 0 reference log-probs).
The trainer never branches on the algorithm's name: the registry object decides every algorithmic choice.

Sampling runs through the `sampler` option (tokrl/sampler/: `auto` = the tokrl engine wherever it runs the
model, else HF generate). The tokrl sampler returns each token's log-prob at sampling time; the step logs
its gap to the loss's log-probs on the selected tokens (tokrl/metrics.py), and gen_seconds/update_seconds.

Randomness per prompt: prompt j of a step (its index in the step's global prompt list) draws its replay
prefix and token selection from a generator seeded from (seed, step, j). Sampling draws from the global
RNG, seeded from (seed, step) and the rank for one generate call per process, or from (seed, step, j) per
prompt with `sample_per_prompt` (then N processes sample exactly what one process samples).

Failures: the output directory is locked for the run (tokrl.run.run_lock); model options are checked before
anything is written (tokrl.run.preflight); a run stopped by a reward error, a non-finite loss or a stall saves a
checkpoint of its last good step first (one process; a reward error on one rank of several cannot be
saved without the others) and says how to continue it.

Multi-process (torchrun / accelerate launch; see tokrl/infra/distributed.py): prompts_per_step is the global
batch, each rank rolls out its contiguous slice of the step's prompts, scored groups are gathered so
every rank's algorithm state and the logged statistics are global, the loss weights use the global
norm_units and the LoRA gradients are summed over ranks: one step equals one process's step on the whole
batch (up to float rounding and LoRA dropout masks, which are drawn per rank). Rank 0 alone writes
metrics (and the report_to backends: TensorBoard, wandb), results and checkpoints; every rank's RNG state is
checkpointed and restored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokrl.algorithms import Group, get_algorithm, validate_rewards
from tokrl.config.loading import load_config
from tokrl.config.schema import TrainConfig
from tokrl.infra import distributed
from tokrl.infra.atomic import write_text_atomic
from tokrl.infra.memory import peak_memory_mib, reset_peak_memory
from tokrl.infra.reporting import build_reporters, check_reporters
from tokrl.infra.seeding import step_seed, stream_seed
from tokrl.models.loading import load_model
from tokrl.models.lora import apply_lora, trainable_parameter_count
from tokrl.models.lora_targets import check_lora_targets_by_name
from tokrl.run.checkpoint import StopSignals, checkpoint_file, load_checkpoint, rng_state, save_checkpoint
from tokrl.run.context import check_prompt_lengths
from tokrl.run.metrics_log import MetricsLog
from tokrl.run.preflight import check_model_options
from tokrl.run.resume import resume_config
from tokrl.run.run_dir import plan_run
from tokrl.run.run_lock import RunLock
from tokrl.run.warm_start import SFT_DIR, sft_stage
from tokrl.sampler.rollout import Rollout, concat_rollouts, decode, encode_prompts, sample_groups
from tokrl.stages.evaluate import evaluate
from tokrl.stages.record import reward_stats, sampler_gap_stats, sampler_logp_gaps
from tokrl.stages.select import gather_rows
from tokrl.stages.update import PolicyUpdate
from tokrl.tasks import get_task
from tokrl.tasks.base import RewardError

logger = logging.getLogger("tokrl")

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"


class StalledRunError(RuntimeError):
    """The run trained nothing for `max_empty_steps` steps in a row."""


@dataclass
class TrainResult:
    """What `train` returns; `results.json` in `output_dir` holds the same numbers."""

    eval_before: float | None
    eval_after: float | None
    steps: int
    output_dir: Path
    interrupted: bool = False
    wall_time_s: float = 0.0
    checkpoint: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def train(
    config: TrainConfig | str | Path | None = None, *, preset: str | None = None, **overrides: Any
) -> TrainResult:
    """Run RL training and return its TrainResult.

    config: a TrainConfig, a YAML file path, or None (then `preset`, by default "tiny-multiplication").
    overrides: flat config keys (`steps=10`, `lora_r=8`, `replay_prob=0.5`) applied last.
    Resuming (`resume=True` or a checkpoint path) from a YAML file or preset starts from the checkpoint's
    config and applies only `overrides`, the file and a named preset; a full TrainConfig is compared as is.
    """
    _log_to_stderr_if_unconfigured()
    if isinstance(config, TrainConfig):
        config = load_config(preset, base=config, **overrides)
    else:
        config = resume_config(load_config(preset, config, **overrides), preset, config, overrides)
    return Trainer(config).run()


def _log_to_stderr_if_unconfigured() -> None:
    """From Python with logging left unconfigured, show tokrl's progress lines (warm start, evaluations,
    resume notes) on stderr, as the CLI does; an application's own logging setup is left alone."""
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class Trainer:
    """Owns the run: checks, warm start, model, optimiser, the loop, checkpoints and evaluation."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.launch = distributed.launch_env()  # rank and world size from torchrun / accelerate launch
        self.device = distributed.resolve_device(config.device, self.launch.local_rank)
        self.output_dir = config.resolved_output_dir()
        self.task = get_task(config.task, **config.task_options)
        self.algorithm = get_algorithm(config.algorithm, config.algo)
        self.train_data = self.task.split("train")
        self.test_data = self.task.split("test")
        self._check_batch()
        self.plan = plan_run(config, self.output_dir)  # checks output_dir and the resume; deletes nothing
        check_lora_targets_by_name(config.model, config.lora.target_modules)  # the architecture only, no weights
        if self.launch.is_main:  # a missing TensorBoard / wandb package fails here, before any weights load
            check_reporters(config.report_to)
        self.step = 0
        self._empty_steps = 0
        self.state: dict[str, Any] = {"eval_before": None, "evals": [], "wall_time_s": 0.0}
        self.model: Any = None
        self._orders: dict[int, list[int]] = {}
        self._threads = torch.get_num_threads()
        self._created = time.perf_counter()
        self._owns_group = False
        self.lock = RunLock(self.output_dir)  # taken in setup (rank 0): one run per output_dir at a time

    # ------------------------------------------------------------------------------------------- setup

    def _check_batch(self) -> None:
        c = self.config
        if len(self.train_data) < c.prompts_per_step:
            raise ValueError(
                f"prompts_per_step: {c.prompts_per_step} prompts per step but the {c.task!r} train split has "
                f"only {len(self.train_data)} examples"
            )
        if len(self.test_data) == 0:
            raise ValueError(f"task: the {c.task!r} test split is empty; evaluation needs examples")
        distributed.check_world_size(c.prompts_per_step, self.launch.world_size)

    def setup(self) -> None:
        """Warm start (cached), load the policy, wrap it with LoRA, build the optimiser, maybe resume."""
        c = self.config
        if c.num_threads > 0:
            torch.set_num_threads(c.num_threads)  # process-wide, like any torch thread setting
        try:
            with distributed.report_failures("setup"):
                self._owns_group = distributed.init(self.device, c.dist_timeout_s) or self._owns_group
                self._setup()
        except BaseException:
            self.plan.abandon()
            self.lock.release_and_tidy()  # nothing of this run stays behind, not even the directory it made
            raise

    def close(self) -> None:
        """Let go of the output directory (run() does this when it returns); safe to call twice."""
        self.lock.release()

    def _setup(self) -> None:
        c = self.config
        checked = check_model_options(c, self.task)  # LoRA targets, prompt lengths: before anything is written
        if distributed.is_main():
            self.lock.acquire()
            self.plan = plan_run(c, self.output_dir)  # again, now that no other run can change the directory
        self.output_dir.mkdir(parents=True, exist_ok=True)
        source = c.model
        if c.sft_steps > 0:  # rank 0 warms up (or finds or copies its result); the others get its path
            warm = None
            if distributed.is_main():
                warm = sft_stage(
                    c, self.task, self.output_dir, self.device, log=logger.info, replace=c.overwrite,
                    reuse_from=self.plan.source_run,
                )  # fmt: skip
                if warm != self.output_dir / SFT_DIR:
                    self.plan.pending_sft = warm  # swapped in by clear_earlier_run, once the run has started
            source = str(distributed.all_gather_object(warm)[0])
        torch.manual_seed(c.seed)  # LoRA initialisation
        model, self.tokenizer = load_model(source, dtype=c.dtype, device=self.device)
        if not checked:
            check_prompt_lengths(self.task, self.tokenizer, model.config, c.generation.max_new_tokens)
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = c.lora
        self.model = apply_lora(
            model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules
        )
        if self.plan.pending_sft is not None:  # adapters name the folder the warm start is committed to
            for peft_config in self.model.peft_config.values():
                peft_config.base_model_name_or_path = str(self.output_dir / SFT_DIR)
        trainable, total = trainable_parameter_count(self.model)
        logger.info("policy %s: %d trainable of %d parameters on %s", source, trainable, total, self.device)
        self.update = PolicyUpdate(self.model, c, self.tokenizer.pad_token_id, self.device, save=self.save)
        self._resume_or_start()
        distributed.barrier()  # rank 0 may have removed stale checkpoints

    def _resume_or_start(self) -> None:
        checkpoint = self.plan.checkpoint
        if checkpoint is None:
            if distributed.is_main():
                self.plan.clear_earlier_run()  # the new run has started: only now may the old one go
            return
        loaded = load_checkpoint(
            checkpoint,
            model=self.model,
            optimizer=self.update.optimizer,
            scheduler=self.update.scheduler,
            rank=distributed.rank(),
        )
        with checkpoint_file(checkpoint, "algorithm_state.json"):
            self.algorithm.load_state_dict(loaded.algorithm_state)
        self.step = loaded.step
        self.state.update({k: v for k, v in loaded.trainer_state.items() if k != "step"})
        if distributed.is_main():
            self.plan.clear_earlier_run()  # leftovers of a killed save only
        for change in self.plan.changes:
            logger.info("resume: applying %s (recorded in the next checkpoint's config.yaml)", change)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # ------------------------------------------------------------------------------------------- steps

    def _permutation(self, epoch: int) -> list[int]:
        """The train-split order of `epoch` (cached: a step reads at most two epochs)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(step_seed(self.config.seed, -1 - epoch))
            self._orders = {epoch: torch.randperm(len(self.train_data), generator=generator).tolist()} | {
                e: o for e, o in self._orders.items() if e == epoch - 1
            }
        return self._orders[epoch]

    def batch_examples(self, step: int) -> list[dict[str, Any]]:
        """The prompts of `step`: consecutive slices of a fresh seeded permutation every epoch."""
        n, per = len(self.train_data), self.config.prompts_per_step
        picks = [divmod(step * per + j, n) for j in range(per)]
        columns = self.train_data[[self._permutation(epoch)[pos] for epoch, pos in picks]]  # one read, not per row
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def local_prompts(self) -> range:
        """Indices into the step's global prompt list that this rank rolls out (a contiguous slice)."""
        per = self.config.prompts_per_step // self.launch.world_size
        return range(self.launch.rank * per, (self.launch.rank + 1) * per)

    def rollout(self, step: int, generators: list[torch.Generator]) -> tuple[Rollout, list[Group], list[list[int]]]:
        """Sample, score and group the completions of this rank's prompts of `step` (one generator per
        prompt); returns (rollout, groups, prefixes)."""
        c, g = self.config, self.config.generation.num_generations
        local = self.local_prompts()
        examples = self.batch_examples(step)[local.start : local.stop]
        keys = [self.task.render_prompt(ex["prompt"], self.tokenizer) for ex in examples]
        prompt_ids = encode_prompts(self.tokenizer, keys)
        prefixes = [self.algorithm.rollout_prefix(key, gen) for key, gen in zip(keys, generators, strict=True)]
        rows = [p + x for p, x in zip(prompt_ids, prefixes, strict=True)]
        options = {"max_new_tokens": c.generation.max_new_tokens, "temperature": c.generation.temperature,
                   "top_p": c.generation.top_p, "sampler": c.generation.sampler}  # fmt: skip
        if c.sample_per_prompt:  # prompt j's completions depend on (seed, step, j) only, not on the rank
            parts = []
            for j, row in zip(local, rows, strict=True):
                torch.manual_seed(stream_seed(c.seed, step, 2 * j + 1))  # generate samples from the global RNG
                parts.append(sample_groups(self.model, self.tokenizer, [row], g, **options))
            out = concat_rollouts(parts)
        else:
            torch.manual_seed(stream_seed(c.seed, step, -self.launch.rank))  # rank 0: step_seed(seed, step)
            out = sample_groups(self.model, self.tokenizer, rows, g, **options)
        texts = decode(self.tokenizer, [prefixes[i // g] + comp for i, comp in enumerate(out.completions)])
        columns = {col: [ex[col] for ex in examples for _ in range(g)] for col in self.train_data.column_names}
        rewards = self.task.reward(texts, **columns)
        validate_rewards(rewards, self.task.reward_name)
        groups = [
            Group(out.completions[i * g : (i + 1) * g], rewards[i * g : (i + 1) * g], keys[i])
            for i in range(len(examples))
        ]
        return out, groups, prefixes

    def train_step(self, step: int) -> dict[str, Any]:
        """One RL step (0-based `step`); returns its metrics (over the global batch)."""
        c, start = self.config, time.perf_counter()
        generators = [torch.Generator().manual_seed(stream_seed(c.seed, step, 2 * j + 2)) for j in self.local_prompts()]
        reset_peak_memory(self.device)
        out, groups, prefixes = self.rollout(step, generators)
        selections = [self.algorithm.process_group(group, gen) for group, gen in zip(groups, generators, strict=True)]
        local = {
            "groups": groups, "prefix_lens": [len(p) for p in prefixes], "zero_std": [s.zero_std for s in selections],
            "seconds": out.seconds, "tokens": out.generated_tokens, "gen_peak_mem_mib": peak_memory_mib(self.device),
            "graphed": out.sampler_graphed,
        }  # fmt: skip
        shards = distributed.all_gather_object(local)  # rank order = global prompt order
        everyone = [group for shard in shards for group in shard["groups"]]
        for group in everyone:  # every rank observes every group: identical algorithm state everywhere
            self.algorithm.observe(group)
        counts = torch.tensor([sum(s.norm_units for s in selections), sum(len(s) for s in selections)]).double()
        units, selected = distributed.all_reduce_sum(counts).tolist()  # global norm_units and selected tokens
        rows = gather_rows(selections, c.generation.num_generations, units=units)
        gen_seconds = time.perf_counter() - start
        stats = self.update.apply(out.prompts, out.completions, rows, step, int(selected))
        update_seconds = time.perf_counter() - start - gen_seconds
        gen_peak = max(s["gen_peak_mem_mib"] for s in shards)
        gaps = distributed.all_gather_object(sampler_logp_gaps(out.logprobs, rows, self.update.last_logp))
        mean, std = reward_stats([r for group in everyone for r in group.rewards])
        completions = [comp for group in everyone for comp in group.completions]
        prefix_lens = [n for shard in shards for n in shard["prefix_lens"]]
        zero_std = [z for shard in shards for z in shard["zero_std"]]
        return {
            "kind": "train",
            "step": step + 1,
            "reward_mean": mean,
            "reward_std": std,
            "frac_zero_std": sum(zero_std) / len(zero_std),
            "completion_len": sum(len(comp) for comp in completions) / len(completions),
            "prefix_len": sum(prefix_lens) / len(prefix_lens),
            "selected_tokens": int(selected),
            **stats,
            "lr": self.update.lr,
            **sampler_gap_stats([g for shard in gaps for g in shard] if None not in gaps else None),
            "gen_seconds": gen_seconds,
            "update_seconds": update_seconds,
            "step_time_s": time.perf_counter() - start,
            "gen_tokens_per_s": sum(s["tokens"] for s in shards) / max(max(s["seconds"] for s in shards), 1e-9),
            "sampler_graphed": min((s["graphed"] for s in shards if s["graphed"] is not None), default=None),
            "gen_peak_mem_mib": gen_peak,
            "peak_mem_mib": max(gen_peak, stats["update_peak_mem_mib"]),
        }

    # ------------------------------------------------------------------------------------ eval and save

    def evaluate(self) -> dict[str, Any]:
        c = self.config
        return evaluate(
            self.model, self.task, tokenizer=self.tokenizer, limit=c.eval_size or None,
            batch_size=c.eval_batch_size, max_new_tokens=c.generation.max_new_tokens, sharded=True,
            sampler=c.generation.sampler,
        )  # fmt: skip

    def save(self) -> Path:
        """Checkpoint (a collective: every rank calls it; rank 0 writes every rank's RNG state)."""
        c = self.config
        states = distributed.all_gather_object(rng_state())
        path = self.output_dir / f"checkpoint-{self.step}"
        if distributed.is_main():
            path = save_checkpoint(
                self.output_dir, self.step, model=self.model, optimizer=self.update.optimizer,
                scheduler=self.update.scheduler,
                trainer_state=self.state, algorithm_state=self.algorithm.state_dict(), config=c.to_dict(),
                keep=c.save_total_limit, rng_states=states,
            )  # fmt: skip
        distributed.barrier()  # no rank reads or moves on before the checkpoint is in place
        return path

    def _finished_eval(self) -> float | None:
        """The "after" accuracy of a resumed run that had already finished at this step, else None."""
        done = [e for e in self.state["evals"] if e.get("when") == "after" and e.get("step") == self.step]
        if not done or self.step < self.config.steps:
            return None
        logger.info("the run had already finished at step %d: nothing to train or evaluate", self.step)
        return done[-1]["accuracy"]

    def _saved_failure(self, err: Exception, start: float, where: str) -> Exception:
        """`err` with the step and how to continue, after saving the last good step (one process only: on one
        rank of several a local failure cannot join the collective save)."""
        where = f" {where}" if where else ""
        if self.launch.world_size > 1:
            return type(err)(f"{err}{where}; continue from the last checkpoint (--save-every) with --resume")
        if self.step == 0:
            return type(err)(f"{err}{where}; no step had been trained, so there is nothing to continue")
        path = self._save_timed(start)
        return type(err)(
            f"{err}{where}; the last good step is saved in {path}: fix the cause, then continue with "
            f"`tokrl train --output-dir {self.output_dir} --resume`"
        )

    def _log_eval(self, log: MetricsLog, when: str, start: float | None = None) -> float:
        try:
            result = self.evaluate()
        except RewardError as err:
            if start is None or when == "before":
                raise type(err)(f"{err} (evaluation {when} training)") from err
            raise self._saved_failure(err, start, f"in the evaluation {when} step {self.step}") from err
        record = {"kind": "eval", "step": self.step, "when": when, **result}
        self.state["evals"].append({k: record[k] for k in ("step", "when", "accuracy", "n")})
        log.write(record)
        logger.info("eval (%s, step %d): accuracy %.3f of %d", when, self.step, result["accuracy"], result["n"])
        return result["accuracy"]

    # -------------------------------------------------------------------------------------------- loop

    def run(self) -> TrainResult:
        """Evaluate, train to `steps` (or until SIGINT/SIGTERM), evaluate, checkpoint, write results.json."""
        start = self._created  # wall time counts the warm start and model loading too
        try:
            if self.model is None:
                self.setup()
            with distributed.report_failures(f"training (step {self.step + 1})"):
                return self._loop(start)
        finally:
            self.close()
            torch.set_num_threads(self._threads)  # setup may have changed it for this run only
            if self._owns_group:
                distributed.destroy()
                self._owns_group = False

    def _loop(self, start: float) -> TrainResult:
        c = self.config
        self._wall_before = float(self.state.get("wall_time_s", 0.0))
        last: dict[str, Any] = {}
        main = distributed.is_main()
        reporters = (
            build_reporters(c.report_to, self.output_dir, config=c.to_dict(), resume_step=self.step) if main else []
        )
        log = MetricsLog(
            self.output_dir / METRICS_FILE, total=c.steps, initial=self.step, resume_step=self.step,
            progress=c.progress, enabled=main, reporters=reporters, history=self.plan.metrics_history,
        )  # fmt: skip
        finished = self._finished_eval()  # a resumed run that had already finished: nothing to redo
        with log, StopSignals() as stop:
            if self.state["eval_before"] is None:
                self.state["eval_before"] = self._log_eval(log, "before", start)
            while self.step < c.steps and not self._stop_agreed(stop.requested):
                try:
                    last = self.train_step(self.step)
                except RewardError as err:  # nothing of this step was applied: the last good step is saved
                    raise self._saved_failure(err, start, f"at step {self.step + 1}") from err
                self.step += 1
                if self.step % c.log_every == 0 or self.step == c.steps:
                    log.write(last)
                log.advance(last)
                try:
                    self._watch_progress(last)  # after logging: a stopped run's last step is in metrics.jsonl
                except StalledRunError as err:
                    raise self._saved_failure(err, start, "") from err
                if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
                    self._log_eval(log, "periodic", start)
                if c.save_every and self.step % c.save_every == 0:
                    self._save_timed(start)
                self._on_step_end()
            interrupted = self.step < c.steps
            eval_after = finished if finished is not None or interrupted else self._log_eval(log, "after", start)
        if finished is not None and self.plan.source_run is None:
            saved_at = self.plan.checkpoint  # already holds this step and its evaluation
        else:
            saved_at = self._save_timed(start)  # also after a periodic save: the state now holds eval_after
        result = TrainResult(
            eval_before=self.state["eval_before"], eval_after=eval_after, steps=self.step,
            output_dir=self.output_dir, interrupted=interrupted, wall_time_s=self.state["wall_time_s"],
            checkpoint=saved_at, metrics=last,
        )  # fmt: skip
        if distributed.is_main():
            self._write_results(result)
        return result

    def _watch_progress(self, record: dict[str, Any]) -> None:
        """Warn about a step whose rewards were all None; stop a run that has trained nothing for
        `max_empty_steps` steps in a row (every rank sees the same global counts, so all stop together)."""
        if record.get("reward_mean") is None or record["reward_mean"] != record["reward_mean"]:  # None or NaN
            logger.warning(
                "step %d: the reward function %r returned None for every completion; nothing to learn from",
                self.step, self.task.reward_name,
            )  # fmt: skip
        self._empty_steps = self._empty_steps + 1 if record.get("selected_tokens") == 0 else 0
        limit = self.config.max_empty_steps
        if limit and self._empty_steps >= limit:
            raise StalledRunError(
                f"no trainable token in the last {self._empty_steps} steps (selected_tokens == 0 up to step "
                f"{self.step}): every group had equal rewards or nothing was selected, so the run would train "
                "nothing; check the reward function and max_tokens, or raise --max-empty-steps (0 = never stop)"
            )

    def _stop_agreed(self, requested: bool) -> bool:
        """True when any rank got SIGINT/SIGTERM: all ranks stop after the same step."""
        if self.launch.world_size == 1:
            return requested
        return bool(distributed.all_reduce_max(torch.tensor([float(requested)]))[0] > 0)

    def _on_step_end(self) -> None:
        """A hook for tests (e.g. to raise a signal mid-run); does nothing."""

    def _save_timed(self, start: float) -> Path:
        """Checkpoint with wall_time_s = earlier processes' time + this process's time so far."""
        self.state["wall_time_s"] = self._wall_before + (time.perf_counter() - start)
        return self.save()

    def _write_results(self, result: TrainResult) -> None:
        c = self.config
        data = {
            "algorithm": c.algorithm,
            "task": c.task,
            "task_options": self.task.options,
            "model": c.model,
            "steps": result.steps,
            "eval_before": result.eval_before,
            "eval_after": result.eval_after,
            "eval_n": self.state["evals"][-1]["n"] if self.state["evals"] else None,
            "interrupted": result.interrupted,
            "wall_time_s": result.wall_time_s,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        }
        write_text_atomic(self.output_dir / RESULTS_FILE, json.dumps(data, indent=2))
