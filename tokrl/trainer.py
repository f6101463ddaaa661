"""The one RL loop shared by every algorithm: `train`, and `Trainer`, which owns a run's lifecycle.

One step is a pipeline of stages (tokrl/stages/, ARCHITECTURE.md), each returning a named result:
    collect(step) -> RolloutBatch -> select(...) -> Selection -> PolicyUpdate.apply(...) -> UpdateResult
    -> step_record(...) -> one line of metrics.jsonl
Everything random is seeded from (seed, step), so a resumed run repeats an uninterrupted one. The trainer never
branches on the algorithm's name: the registry object decides every algorithmic choice.

Around the steps the trainer keeps: setup (the lock, the warm start, the model and LoRA, the update, resume),
evaluation and checkpoint cadence, SIGINT/SIGTERM, failures and results.json. A run stopped by a reward error, a
non-finite loss or a stall saves a checkpoint of its last good step first and says how to continue it. With
several ranks every rank stops at the same step and joins that save: a stall and a non-finite loss are decided
on global numbers, and a reward error on one rank is raised on every rank right after scoring (the failing rank
raises its own error, the others a RewardError naming that rank and its message).

Multi-process (torchrun / accelerate launch; see tokrl/infra/distributed.py): prompts_per_step is the global
batch, each rank rolls out its contiguous slice of the step's prompts, scored groups are gathered so every rank's
algorithm state and the logged statistics are global, the loss weights use the global norm_units and the LoRA
gradients are summed over ranks: one step equals one process's step on the whole batch (up to float rounding and
LoRA dropout masks, which are drawn per rank). Rank 0 alone writes metrics (and the report_to backends), results
and checkpoints; every rank's RNG state is checkpointed and restored.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tokrl.algorithms import get_algorithm
from tokrl.config.loading import load_config
from tokrl.config.schema import TrainConfig
from tokrl.infra import distributed
from tokrl.infra.memory import reset_peak_memory
from tokrl.infra.reporting import check_reporters
from tokrl.models.loading import load_model
from tokrl.models.lora import apply_lora, trainable_parameter_count
from tokrl.models.lora_targets import check_lora_targets_by_name
from tokrl.run.checkpoint import StopSignals, checkpoint_file, load_checkpoint, rng_state, save_checkpoint
from tokrl.run.context import check_prompt_lengths
from tokrl.run.metrics_log import MetricsLog
from tokrl.run.preflight import check_model_options, check_splits
from tokrl.run.progress import StalledRunError, StallWatch
from tokrl.run.results import TrainResult, write_results
from tokrl.run.resume import resume_config
from tokrl.run.run_dir import METRICS_FILE, plan_run
from tokrl.run.run_lock import RunLock
from tokrl.run.warm_start import SFT_DIR, warm_start_source
from tokrl.stages.collect import Collector
from tokrl.stages.evaluate import evaluate
from tokrl.stages.record import step_record
from tokrl.stages.select import select
from tokrl.stages.update import NonFiniteLossError, PolicyUpdate
from tokrl.tasks import get_task
from tokrl.tasks.base import RewardError

logger = logging.getLogger("tokrl")

__all__ = ["Trainer", "train"]


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
        check_splits(config, len(self.task.split("train")), len(self.task.split("test")), self.launch.world_size)
        self.plan = plan_run(config, self.output_dir)  # checks output_dir and the resume; deletes nothing
        check_lora_targets_by_name(config.model, config.lora.target_modules)  # the architecture only, no weights
        if self.launch.is_main:  # a missing TensorBoard / wandb package fails here, before any weights load
            check_reporters(config.report_to)
        self.step = 0
        self.stall = StallWatch(config.max_empty_steps, self.task.reward_name)
        self.state: dict[str, Any] = {"eval_before": None, "evals": [], "wall_time_s": 0.0}
        self.model: Any = None
        self._threads = torch.get_num_threads()
        self._created = time.perf_counter()
        self._owns_group = False
        self.lock = RunLock(self.output_dir)  # taken in setup (rank 0): one run per output_dir at a time

    # ------------------------------------------------------------------------------------------- setup

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
            source, pending = warm_start_source(c, self.task, self.output_dir, self.device, self.plan.source_run)
            if pending is not None:  # swapped in by clear_earlier_run, once the run has started
                self.plan.pending_sft = pending
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
        self.update = PolicyUpdate.for_run(self.model, c, self.tokenizer.pad_token_id, self.device)
        self.collector = Collector(self.model, self.tokenizer, self.task, self.algorithm, c, self.launch, self.device)
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

    def train_step(self, step: int) -> dict[str, Any]:
        """One RL step (0-based `step`): collect, select, update; returns its metrics (over the global batch)."""
        start = time.perf_counter()
        reset_peak_memory(self.device)
        batch = self.collector.collect(step)
        chosen = select(batch, self.algorithm, self.config.generation.num_generations)
        gen_seconds = time.perf_counter() - start
        update = self.update.apply(batch.prompts, batch.completions, chosen.rows, step, chosen.selected)
        return step_record(step, batch.rollout, chosen, update, start, gen_seconds)

    # ------------------------------------------------------------------------------------ eval and save

    def evaluate(self) -> dict[str, Any]:
        c = self.config
        return evaluate(
            self.model,
            self.task,
            tokenizer=self.tokenizer,
            limit=c.eval_size or None,
            batch_size=c.eval_batch_size,
            max_new_tokens=c.generation.max_new_tokens,
            sharded=True,
            sampler=c.generation.sampler,
        )

    def save(self) -> Path:
        """Checkpoint (a collective: every rank calls it; rank 0 writes every rank's RNG state)."""
        c = self.config
        states = distributed.all_gather_object(rng_state())
        path = self.output_dir / f"checkpoint-{self.step}"
        if distributed.is_main():
            path = save_checkpoint(
                self.output_dir,
                self.step,
                model=self.model,
                optimizer=self.update.optimizer,
                scheduler=self.update.scheduler,
                trainer_state=self.state,
                algorithm_state=self.algorithm.state_dict(),
                config=c.to_dict(),
                keep=c.save_total_limit,
                rng_states=states,
            )
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
        """`err` with the step and how to continue, after saving the last good step (a collective: every rank
        fails together, see the module docstring)."""
        where = f" {where}" if where else ""
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
            with distributed.report_failures(lambda: f"training (step {self.step + 1})"):  # the failing step
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
        log = MetricsLog.for_run(c, self.output_dir / METRICS_FILE, self.step, self.plan.metrics_history)
        finished = self._finished_eval()  # a resumed run that had already finished: nothing to redo
        with log, StopSignals() as stop:
            if self.state["eval_before"] is None:
                self.state["eval_before"] = self._log_eval(log, "before", start)
            while self.step < c.steps and not distributed.any_rank(stop.requested):  # all ranks stop together
                try:
                    last = self.train_step(self.step)
                except RewardError as err:  # nothing of this step was applied: the last good step is saved
                    raise self._saved_failure(err, start, f"at step {self.step + 1}") from err
                except NonFiniteLossError as err:  # the update stopped before its optimiser step
                    raise err.saved_to(self.save()) from None
                self.step += 1
                if self.step % c.log_every == 0 or self.step == c.steps:
                    log.write(last)
                log.advance(last)
                try:
                    self.stall.check(self.step, last)  # after logging: a stopped run's last step is in metrics.jsonl
                except StalledRunError as err:
                    raise self._saved_failure(err, start, "") from err
                if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
                    self._log_eval(log, "periodic", start)
                if c.save_every and self.step % c.save_every == 0:
                    self._save_timed(start)
            interrupted = self.step < c.steps
            eval_after = finished if finished is not None or interrupted else self._log_eval(log, "after", start)
        if finished is not None and self.plan.source_run is None:
            saved_at = self.plan.checkpoint  # already holds this step and its evaluation
        else:
            saved_at = self._save_timed(start)  # also after a periodic save: the state now holds eval_after
        result = TrainResult(
            eval_before=self.state["eval_before"],
            eval_after=eval_after,
            steps=self.step,
            output_dir=self.output_dir,
            interrupted=interrupted,
            wall_time_s=self.state["wall_time_s"],
            checkpoint=saved_at,
            metrics=last,
        )
        if distributed.is_main():
            write_results(result, c, self.task.options, self.state["evals"])
        return result

    def _save_timed(self, start: float) -> Path:
        """Checkpoint with wall_time_s = earlier processes' time + this process's time so far."""
        self.state["wall_time_s"] = self._wall_before + (time.perf_counter() - start)
        return self.save()
