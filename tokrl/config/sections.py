"""The config's sections: each holds the fields one part of a run reads, and checks its own values (`check()`).

Run-level sections are flat in TrainConfig: their fields are TrainConfig's own attributes and flat keys, and sit
at the top level of a config file. RunConfig: what is trained, on what, for how long; OptimConfig: the optimiser
and its schedule; LossConfig: the loss and its forward; WarmStartConfig; EvalConfig; LoopConfig: checkpoints,
resume, logging, the stall guard, processes. Nested sections keep a level of their own in files:
GenerationConfig (`generation`), LoRAConfig (`lora`) and AlgoConfig (`algo`, owned by tokrl.algorithms.base).
Every field is documented once, in its `metadata={"help": ...}`, which the CLI reuses as flag help.

`check()` looks at its section alone and raises ValueError naming the flat key, what was expected and what came;
what needs two sections, a registry or the file system is tokrl.config.checks'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokrl.infra.hub import looks_like_path
from tokrl.infra.lr_schedule import SCHEDULES
from tokrl.infra.registry import unknown_choice
from tokrl.infra.validation import check_finite, require
from tokrl.models.names import ALL_LINEAR, TINY_NAME, target_entries
from tokrl_kernels import IMPLS

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def validate_device(device: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N', and a CUDA device only where CUDA is available."""
    if not _DEVICE_RE.match(device):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for but CUDA is not available; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")


def validate_model_name(model: str) -> None:
    """'tiny', an existing local directory, or something shaped like a hub id ('org/name' or 'name')."""
    if model == TINY_NAME or Path(model).is_dir():
        return
    if looks_like_path(model):
        raise ValueError(
            f"model: unknown {model!r}; expected one of: {TINY_NAME!r} (built in), a local model directory "
            "(with config.json), or a Hugging Face hub id such as 'Qwen/Qwen2-1.5B'"
        )


@dataclass
class RunConfig:
    """What is trained, on what, with which seed and for how long (algorithm, task and model by name)."""

    algorithm: str = field(default="s-grpo", metadata={"help": "RL algorithm (registry name)."})
    task: str = field(default="svamp", metadata={"help": "Task (registry name)."})
    task_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Task options as a mapping, e.g. '{digits_a: 2, digits_b: 2}'."}
    )
    model: str = field(
        default="Qwen/Qwen2-1.5B", metadata={"help": "'tiny', a local model directory or a Hugging Face hub id."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."}
    )
    device: str = field(default="auto", metadata={"help": "Device: auto (cuda when available), cpu, cuda, cuda:1."})
    num_threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0 = torch's default, which follows OMP_NUM_THREADS)."}
    )
    seed: int = field(default=0, metadata={"help": "Run seed: data order, sampling, token selection, LoRA init."})
    steps: int = field(default=200, metadata={"help": "RL steps (one rollout batch each)."})
    prompts_per_step: int = field(default=4, metadata={"help": "Prompts per step; the batch is prompts x G."})

    def check(self) -> None:
        check_finite(self, RunConfig)
        validate_model_name(self.model)
        require(self.steps >= 0, f"steps: must be >= 0, got {self.steps}")
        require(self.prompts_per_step >= 1, f"prompts_per_step: must be >= 1, got {self.prompts_per_step}")
        require(self.num_threads >= 0, f"num_threads: must be >= 0, got {self.num_threads}")
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, list(DTYPES))
        validate_device(self.device)


@dataclass
class OptimConfig:
    """AdamW on the LoRA weights and its learning-rate schedule (tokrl.infra.lr_schedule)."""

    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate for the LoRA weights."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="constant", metadata={"help": "constant, linear or cosine (after warmup)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warmup, in optimiser steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (<= 0: no clipping)."})

    def check(self) -> None:
        check_finite(self, OptimConfig)
        require(self.lr > 0, f"lr: must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.lr_scheduler not in SCHEDULES:
            raise unknown_choice("lr_scheduler", self.lr_scheduler, list(SCHEDULES))


@dataclass
class LossConfig:
    """The clipped policy-gradient loss and its forward: clipping, KL, PPO iterations, kernel, memory."""

    eps_low: float = field(default=0.2, metadata={"help": "PPO clip: ratio lower bound 1 - eps_low."})
    eps_high: float = field(default=0.2, metadata={"help": "PPO clip: ratio upper bound 1 + eps_high."})
    beta: float = field(
        default=0.0, metadata={"help": "KL (k3) weight to the base model (the adapter disabled); 0 = off."}
    )
    num_iterations: int = field(
        default=1, metadata={"help": "Optimiser steps per rollout batch (> 1 uses the PPO ratio and clipping)."}
    )
    impl: str = field(default="auto", metadata={"help": "Kernel implementation: auto, triton or torch."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward (less memory, slower)."}
    )
    loss_micro_batch: int = field(
        default=0,
        metadata={
            "help": "Forward rows per loss micro-batch (gradients accumulate; the loss is unchanged); 0 = all "
            "rows in one forward. Bounds the update's activation memory."
        },
    )
    share_prompts: bool = field(
        default=False,
        metadata={
            "help": "Loss forward: run each distinct prompt once and continue its rows from its keys/values "
            "(fewer forward tokens: 2.3x at tiny-multiplication; LoRA dropout masks on a prompt's tokens are then "
            "shared by its rows). Needs eager/sdpa attention, full-attention layers, no gradient checkpointing; "
            "elsewhere the plain forward runs, with a warning."
        },
    )

    def check(self) -> None:
        check_finite(self, LossConfig)
        require(self.num_iterations >= 1, f"num_iterations: must be >= 1, got {self.num_iterations}")
        require(self.loss_micro_batch >= 0, f"loss_micro_batch: must be >= 0 (0 = all), got {self.loss_micro_batch}")
        require(self.beta >= 0, f"beta: must be >= 0, got {self.beta}")
        require(0 <= self.eps_low < 1, f"eps_low: must be in [0, 1) (ratio floor 1 - eps_low > 0), got {self.eps_low}")
        require(0 <= self.eps_high < 1, f"eps_high: must be in [0, 1), got {self.eps_high}")
        if self.impl not in IMPLS:
            raise unknown_choice("impl", self.impl, list(IMPLS))


@dataclass
class WarmStartConfig:
    """The supervised warm start before RL (tokrl.stages.warm_start), cached in output_dir/sft."""

    sft_steps: int = field(
        default=0,
        metadata={"help": "Supervised warm-start steps (full fine-tune) before RL; cached in output_dir/sft."},
    )
    sft_lr: float = field(default=1e-3, metadata={"help": "Learning rate of the supervised warm start."})
    sft_batch_size: int = field(default=32, metadata={"help": "Examples per supervised warm-start step."})
    sft_target_accuracy: float = field(
        default=0.0,
        metadata={
            "help": "Stop the warm start once its greedy accuracy on the first sft_check_size training examples "
            "reaches this (checked every sft_check_every steps; 0 = run all sft_steps). Lands every seed at about "
            "the same starting accuracy, where a fixed step count lands them 40 points apart on the tiny model."
        },
    )
    sft_check_every: int = field(default=50, metadata={"help": "Warm-start steps between accuracy checks."})
    sft_check_size: int = field(default=256, metadata={"help": "Training examples in each warm-start check."})

    def check(self) -> None:
        check_finite(self, WarmStartConfig)
        require(self.sft_steps >= 0, f"sft_steps: must be >= 0, got {self.sft_steps}")
        require(self.sft_lr > 0, f"sft_lr: must be > 0, got {self.sft_lr}")
        require(self.sft_batch_size >= 1, f"sft_batch_size: must be >= 1, got {self.sft_batch_size}")
        require(
            0 <= self.sft_target_accuracy <= 1,
            f"sft_target_accuracy: must be in [0, 1] (0 = off), got {self.sft_target_accuracy}",
        )
        require(self.sft_check_every >= 1, f"sft_check_every: must be >= 1, got {self.sft_check_every}")
        require(self.sft_check_size >= 1, f"sft_check_size: must be >= 1, got {self.sft_check_size}")


@dataclass
class EvalConfig:
    """Greedy evaluation on the test split: before and after training, and every eval_every steps."""

    eval_every: int = field(
        default=0, metadata={"help": "Greedy test evaluation every N steps (0 = only before and after)."}
    )
    eval_size: int = field(default=0, metadata={"help": "Test examples evaluated (0 = the whole test split)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per greedy evaluation batch."})

    def check(self) -> None:
        require(self.eval_every >= 0, f"eval_every: must be >= 0, got {self.eval_every}")
        require(self.eval_size >= 0, f"eval_size: must be >= 0 (0 = all), got {self.eval_size}")
        require(self.eval_batch_size >= 1, f"eval_batch_size: must be >= 1, got {self.eval_batch_size}")


@dataclass
class LoopConfig:
    """How the loop keeps its run: checkpoints, resume and overwrite, logging and reporting, the stall guard, and
    how several processes sample and wait for each other."""

    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = only at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept, newest first (0 = keep all)."})
    output_dir: str = field(
        default="outputs/{task}-{algorithm}",
        metadata={"help": "Run directory; {field} placeholders are filled from this config."},
    )
    resume: bool | str = field(
        default=False,
        metadata={
            "help": "Continue a run: true = from the newest complete checkpoint in output_dir, or the path of a "
            "checkpoint-N folder. Flags you pass must agree with the checkpoint's config, except those "
            "tokrl.run.resume.SAFE_TO_CHANGE lists (steps, eval/save cadence, logging, ...), which are applied."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an earlier run in output_dir (its checkpoints, metrics and results) once the new run "
            "has started; without it a non-empty output_dir is refused."
        },
    )
    max_empty_steps: int = field(
        default=20,
        metadata={
            "help": "Stop the run after this many consecutive steps without a single trainable token "
            "(selected_tokens == 0); 0 = never stop."
        },
    )
    log_every: int = field(default=1, metadata={"help": "Write metrics every N steps."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (only on a terminal)."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Where metrics go besides metrics.jsonl, comma-separated: none, tensorboard (event files in "
            "output_dir/tensorboard; pip install 'tokrl[tensorboard]'), wandb (pip install 'tokrl[wandb]'; "
            "WANDB_MODE=offline is respected). Rank 0 only."
        },
    )
    sample_per_prompt: bool = field(
        default=False,
        metadata={
            "help": "Sample each prompt's G completions in its own generate call seeded from (seed, step, prompt "
            "index): completions then do not depend on how prompts are split over processes (N processes "
            "reproduce one), at the cost of one generate call per prompt. False: one call per step and process."
        },
    )
    dist_timeout_s: float = field(
        default=1800.0,
        metadata={
            "help": "Multi-process runs: seconds a collective (and rank 0's warm start) may wait for the other "
            "ranks before the run fails instead of hanging."
        },
    )

    def check(self) -> None:
        check_finite(self, LoopConfig)
        require(self.save_every >= 0, f"save_every: must be >= 0, got {self.save_every}")
        require(self.save_total_limit >= 0, f"save_total_limit: must be >= 0, got {self.save_total_limit}")
        require(self.log_every >= 1, f"log_every: must be >= 1, got {self.log_every}")
        require(
            self.max_empty_steps >= 0, f"max_empty_steps: must be >= 0 (0 = never stop), got {self.max_empty_steps}"
        )
        require(self.dist_timeout_s > 0, f"dist_timeout_s: must be > 0, got {self.dist_timeout_s}")


@dataclass
class GenerationConfig:
    """How the G rollout completions of a prompt are sampled, by the sampler `sampler` names (tokrl/sampler/)."""

    num_generations: int = field(default=8, metadata={"help": "G: completions sampled per prompt (>= 2)."})
    max_new_tokens: int = field(default=200, metadata={"help": "Most new tokens per completion (also for eval)."})
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; the loss's log-probs use the same temperature (pi_theta = sampler)."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0 = full distribution)."})
    sampler: str = field(
        default="auto",
        metadata={
            "help": "Rollout and eval sampler: tokrl (static KV cache, one prefill per prompt, CUDA graphs on GPU), "
            "tokrl-merged (tokrl with LoRA merged into copies of the base weights: fewer kernels, more memory), "
            "hf (transformers generate) or auto (where the engine runs the model: tokrl-merged when its copies take "
            "at most a quarter of the free memory, else tokrl; elsewhere hf)."
        },
    )

    def check(self) -> None:
        check_finite(self, GenerationConfig)
        require(
            self.num_generations >= 2,
            f"num_generations: must be >= 2 (a group baseline needs 2), got {self.num_generations}",
        )
        require(self.max_new_tokens >= 1, f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, f"temperature: must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"top_p: must be in (0, 1], got {self.top_p}")


@dataclass
class LoRAConfig:
    """LoRA adapter on the policy (never on lm_head); flat keys carry a `lora_` prefix."""

    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input (active in the loss forward)."})
    target_modules: list[str] = field(
        default_factory=lambda: [ALL_LINEAR],
        metadata={
            "help": "Modules that get adapters: all-linear (every linear layer of the decoder, never the LM head or "
            "an embedding) or module names, e.g. q_proj,v_proj (each must exist in the model)."
        },
    )

    def check(self) -> None:
        check_finite(self, LoRAConfig, prefix="lora_")
        require(self.r >= 1, f"lora_r: must be >= 1, got {self.r}")
        require(self.alpha > 0, f"lora_alpha: must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, f"lora_dropout: must be in [0, 1), got {self.dropout}")
        require(bool(self.target_modules), "lora_target_modules: must name at least one module")
        target_entries(self.target_modules)
