"""Training configuration: one dataclass tree, named presets, YAML files and `--key value` overrides.

`TrainConfig` holds the run-level fields and three sections: `generation` (GenerationConfig: how rollouts
are sampled), `lora` (LoRAConfig) and `algo` (AlgoConfig, owned by `tokrl.algorithms.base`). Every field is
documented once, in its `metadata={"help": ...}`, which the CLI reuses as flag help.

Flat keys: every field also has one flat name, used by `--key value`, `load_config(**overrides)` and flat
YAML files: run-level fields by their name, `generation` and `algo` fields by their name (`temperature`,
`replay_prob`), `lora` fields with a `lora_` prefix (`lora_r`, `lora_alpha`). Nested YAML (`lora: {r: 8}`)
is accepted too. The resolved config is written nested (`to_dict`).

Precedence in `load_config`: dataclass defaults < preset < YAML file < overrides. One exception: a preset's
`num_threads` gives way to OMP_NUM_THREADS in the environment (the user's own setting); then num_threads is 0,
torch's default, which reads that variable. A YAML file or an override still sets num_threads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokrl.algorithms.base import AlgoConfig
from tokrl.algorithms.sampling import SELECTION_RULES

__all__ = [
    "AlgoConfig",
    "DEFAULT_PRESET",
    "GenerationConfig",
    "LoRAConfig",
    "PRESETS",
    "TrainConfig",
    "flat_fields",
    "load_config",
    "validate_config",
]

# The paper's LoRA modules (Qwen2 names); the default `all-linear` selects exactly these on Qwen2 and Llama.
PAPER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"
LR_SCHEDULERS = ("constant", "linear", "cosine")
DTYPES = ("auto", "float32", "bfloat16", "float16")
IMPLS = ("auto", "triton", "torch")


@dataclass
class GenerationConfig:
    """How the G rollout completions of a prompt are sampled (HF `generate`, sampling on)."""

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
            "hf (transformers generate) or auto (tokrl where it runs the model, else hf)."
        },
    )


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


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults are the paper's settings for real models; see PRESETS."""

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
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate for the LoRA weights."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="constant", metadata={"help": "constant, linear or cosine (after warmup)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warmup, in optimiser steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (<= 0: no clipping)."})
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
            "shared by its rows). Needs eager/sdpa attention, full-attention layers, no gradient checkpointing."
        },
    )
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
    eval_every: int = field(
        default=0, metadata={"help": "Greedy test evaluation every N steps (0 = only before and after)."}
    )
    eval_size: int = field(default=0, metadata={"help": "Test examples evaluated (0 = the whole test split)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per greedy evaluation batch."})
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
            "tokrl.resume.SAFE_TO_CHANGE lists (steps, eval/save cadence, logging, ...), which are applied."
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
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Rollout sampling."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapter."})
    algo: AlgoConfig = field(default_factory=AlgoConfig, metadata={"help": "Algorithm options."})

    def to_dict(self) -> dict[str, Any]:
        """The nested plain-data form (what YAML files and checkpoints hold)."""
        return dataclasses.asdict(self)

    def resolved_output_dir(self) -> Path:
        """output_dir with `{field}` placeholders filled from the run-level fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SECTIONS}
        return Path(self.output_dir.format(**values))


# section name -> flat-key prefix
SECTIONS: dict[str, str] = {"generation": "", "lora": "lora_", "algo": ""}

DEFAULT_PRESET = "tiny-multiplication"

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: a tiny model (264-token character vocabulary) on 3-digit x 1-digit products, on CPU.
    # 3x1 has ~9,000 pairs, too many for the tiny model to memorise, so what RL teaches on the training split
    # carries over to held-out products. The model has no pretrained weights: a supervised warm start makes it
    # partly right first, and stops once greedy accuracy on 256 training products reaches 50% (a fixed step
    # count left seeds 9%-55% held-out). Answers are at most 4 digits + EOS, hence max_new_tokens 5.
    # T-SPMO runs without replay: G completions of a 4-digit answer already branch inside it. S-GRPO: the
    # paper's sequential rule, alpha 2, max_tokens 4, keep_prob 0.75 (answers have at most 5 tokens).
    # share_prompts and LoRA dropout 0 make a step 0.65-0.83x as long; 1,500 RL steps keep every seed measured
    # above +15 points. The measurements behind each value: benchmarks/NOTES.md, "The embedded default's preset".
    "tiny-multiplication": {
        "model": "tiny",
        "task": "multiplication",
        "task_options": {"digits_a": 3, "digits_b": 1},
        "algorithm": "t-spmo",
        "device": "cpu",
        "dtype": "float32",
        "num_threads": 2,
        "steps": 1500,
        "prompts_per_step": 64,
        "num_generations": 8,
        "max_new_tokens": 5,
        "lr": 1e-3,
        "max_grad_norm": 1.0,
        "lora_r": 16,
        "lora_alpha": 32.0,
        "lora_dropout": 0.0,
        "share_prompts": True,
        "sft_steps": 2000,
        "sft_lr": 3e-3,
        "sft_batch_size": 64,
        "sft_target_accuracy": 0.5,
        "eval_every": 100,
        "eval_size": 500,
        "eval_batch_size": 500,
        "replay_prob": 0.0,
        "alpha": 2,
        "max_tokens": 4,
        "keep_prob": 0.75,
        "output_dir": "outputs/tiny-multiplication-{algorithm}",
    },
    # The paper's setting (needs a GPU): Qwen2-1.5B base + LoRA r16/a32/d0.05, AdamW 1e-4, G = 8.
    "svamp-qwen2-1.5b": {
        "model": "Qwen/Qwen2-1.5B",
        "task": "svamp",
        "algorithm": "s-grpo",
        "dtype": "bfloat16",
        "device": "auto",
        "steps": 200,
        "prompts_per_step": 4,
        "num_generations": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 200,
        "lr": 1e-4,
        "lora_r": 16,
        "lora_alpha": 32.0,
        "lora_dropout": 0.05,
        "lora_target_modules": list(PAPER_LORA_TARGETS),
        "eval_every": 50,
        "eval_batch_size": 64,
        "save_every": 50,
        # Bounds the update's activations to 8 rows at a time, whatever the algorithm (the loss is unchanged).
        # Estimate from the H200 train-step run (4.45 MB of activations per forward token, bf16, no
        # checkpointing): full-token GRPO on 32 x ~250 tokens would need ~36 GB + 3 GB of weights, too close to
        # a 40 GB card; 8 rows need ~9 GB. Measured peaks on a GPU are pending.
        "loss_micro_batch": 8,
        "output_dir": "outputs/svamp-qwen2-1.5b-{algorithm}",
    },
}


@dataclass(frozen=True)
class FlatField:
    """Where a flat key lives: `section` ('' = run level), the dataclass field, and its resolved type."""

    key: str
    section: str
    field: dataclasses.Field
    type: Any


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in SECTIONS}


def flat_fields() -> dict[str, FlatField]:
    """Every flat key -> FlatField, in declaration order (run-level fields first)."""
    out: dict[str, FlatField] = {}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS:
            out[f.name] = FlatField(f.name, "", f, hints[f.name])
    for section, cls in _section_classes().items():
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = SECTIONS[section] + f.name
            if key in out:
                raise AssertionError(f"config: flat key {key!r} is defined twice")  # a programming error
            out[key] = FlatField(key, section, f, sub_hints[f.name])
    return out


def _choices_error(kind: str, name: str, choices: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"{kind}: unknown {name!r}{hint}; expected one of: {', '.join(choices)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (possibly a CLI string) to the field type `tp`, or raise naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and set(args) == {bool, str}:  # `resume`: a flag or a path
        parsed = yaml.safe_load(value) if isinstance(value, str) and value.strip() else value
        if isinstance(parsed, bool):
            return parsed
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError(f"{key}: expected true, false or a path, got {value!r}")
    if origin in (typing.Union, types.UnionType):  # otherwise only `X | None` is used
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{key}: cannot parse {value!r} as YAML ({problem})") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a mapping like '{{a: 1}}', got {value!r}")
        return dict(value)
    return value


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Nested or flat mapping -> flat keys (unknown keys raise with close matches)."""
    fields = flat_fields()
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                flat[SECTIONS[key] + str(sub).replace("-", "_")] = sub_value
        else:
            flat[key] = value
    for key in flat:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; see `tokrl train --help`"
            raise ValueError(f"{source}: unknown config key {key!r}{hint}")
    return flat


def _apply(config: TrainConfig, flat: Mapping[str, Any]) -> TrainConfig:
    fields = flat_fields()
    for key, value in flat.items():
        spec = fields[key]
        target = getattr(config, spec.section) if spec.section else config
        setattr(target, spec.field.name, _coerce(value, spec.type, key))
    return config


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    *,
    base: TrainConfig | None = None,
    validate: bool = True,
    **overrides: Any,
) -> TrainConfig:
    """Build a TrainConfig: `base` (or defaults + `preset`, DEFAULT_PRESET when neither is given) <
    YAML `config_file` < `overrides` (flat keys or section mappings). Values may be CLI strings."""
    if preset is not None and preset not in PRESETS:
        raise _choices_error("preset", preset, sorted(PRESETS))
    if base is not None:
        config = config_from_dict(base.to_dict())  # a deep copy: sections, lists and dicts are mutable
        if preset is not None:
            config = _apply(config, _flatten(PRESETS[preset], f"preset {preset!r}"))
    else:
        config = _apply(TrainConfig(), _flatten(PRESETS[preset or DEFAULT_PRESET], f"preset {preset!r}"))
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            config.num_threads = 0  # the environment's thread count wins over a preset's (see the module doc)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config: file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ValueError(
                f"config: {str(path)!r} is not a text YAML file (byte {err.object[err.start]:#04x} at offset "
                f"{err.start} is not UTF-8)"
            ) from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"config: {str(path)!r} is not valid YAML: {problem}{where}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"config: {str(path)!r} must hold a mapping of keys to values")
        config = _apply(config, _flatten(data, str(path)))
    config = _apply(config, _flatten(overrides, "override"))
    if validate:
        validate_config(config)
    return config


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict()` output (e.g. a checkpoint's config.yaml)."""
    return _apply(TrainConfig(), _flatten(data, "config"))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_config(config: TrainConfig) -> None:
    """Names and batch arithmetic, checked before any weights load; each message names its field."""
    from tokrl.algorithms import available_algorithms
    from tokrl.reporting import NO_REPORTER, available_reporters
    from tokrl.tasks import available_tasks

    if config.algorithm not in available_algorithms():
        raise _choices_error("algorithm", config.algorithm, available_algorithms())
    if config.task not in available_tasks():
        raise _choices_error("task", config.task, available_tasks())
    validate_model_name(config.model)
    _check_finite(config)
    g = config.generation
    _check(config.steps >= 0, f"steps: must be >= 0, got {config.steps}")
    _check(config.prompts_per_step >= 1, f"prompts_per_step: must be >= 1, got {config.prompts_per_step}")
    _check(g.num_generations >= 2, f"num_generations: must be >= 2 (a group baseline needs 2), got {g.num_generations}")
    _check(g.max_new_tokens >= 1, f"max_new_tokens: must be >= 1, got {g.max_new_tokens}")
    _check(g.temperature > 0, f"temperature: must be > 0, got {g.temperature}")
    _check(0 < g.top_p <= 1, f"top_p: must be in (0, 1], got {g.top_p}")
    _check(config.lr > 0, f"lr: must be > 0, got {config.lr}")
    _check(config.weight_decay >= 0, f"weight_decay: must be >= 0, got {config.weight_decay}")
    _check(config.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {config.warmup_steps}")
    _check(config.num_iterations >= 1, f"num_iterations: must be >= 1, got {config.num_iterations}")
    _check(config.loss_micro_batch >= 0, f"loss_micro_batch: must be >= 0 (0 = all), got {config.loss_micro_batch}")
    _check(config.beta >= 0, f"beta: must be >= 0, got {config.beta}")
    _check(0 <= config.eps_low < 1, f"eps_low: must be in [0, 1) (ratio floor 1 - eps_low > 0), got {config.eps_low}")
    _check(0 <= config.eps_high < 1, f"eps_high: must be in [0, 1), got {config.eps_high}")
    _check(config.algo.max_tokens >= 1, f"max_tokens: must be >= 1 (0 selects no token to train), got "
           f"{config.algo.max_tokens}")  # fmt: skip
    _check(config.algo.alpha >= 0, f"alpha: must be >= 0, got {config.algo.alpha}")
    _check(config.lora.alpha > 0, f"lora_alpha: must be > 0, got {config.lora.alpha}")
    _check(config.max_empty_steps >= 0, f"max_empty_steps: must be >= 0 (0 = never stop), got {config.max_empty_steps}")
    _check(config.sft_steps >= 0, f"sft_steps: must be >= 0, got {config.sft_steps}")
    _check(config.sft_lr > 0, f"sft_lr: must be > 0, got {config.sft_lr}")
    _check(config.sft_batch_size >= 1, f"sft_batch_size: must be >= 1, got {config.sft_batch_size}")
    _check(0 <= config.sft_target_accuracy <= 1, f"sft_target_accuracy: must be in [0, 1] (0 = off), got "
           f"{config.sft_target_accuracy}")  # fmt: skip
    _check(config.sft_check_every >= 1, f"sft_check_every: must be >= 1, got {config.sft_check_every}")
    _check(config.sft_check_size >= 1, f"sft_check_size: must be >= 1, got {config.sft_check_size}")
    _check(config.eval_every >= 0, f"eval_every: must be >= 0, got {config.eval_every}")
    _check(config.eval_size >= 0, f"eval_size: must be >= 0 (0 = all), got {config.eval_size}")
    _check(config.eval_batch_size >= 1, f"eval_batch_size: must be >= 1, got {config.eval_batch_size}")
    _check(config.save_every >= 0, f"save_every: must be >= 0, got {config.save_every}")
    _check(config.save_total_limit >= 0, f"save_total_limit: must be >= 0, got {config.save_total_limit}")
    _check(config.num_threads >= 0, f"num_threads: must be >= 0, got {config.num_threads}")
    _check(config.log_every >= 1, f"log_every: must be >= 1, got {config.log_every}")
    _check(config.dist_timeout_s > 0, f"dist_timeout_s: must be > 0, got {config.dist_timeout_s}")
    _check(config.lora.r >= 1, f"lora_r: must be >= 1, got {config.lora.r}")
    _check(0 <= config.lora.dropout < 1, f"lora_dropout: must be in [0, 1), got {config.lora.dropout}")
    _check(bool(config.lora.target_modules), "lora_target_modules: must name at least one module")
    targets = config.lora.target_modules
    _check(len(targets) == 1 or ALL_LINEAR not in [t.lower() for t in targets],
           f"lora_target_modules: {ALL_LINEAR!r} stands alone, got {','.join(targets)}")  # fmt: skip
    if config.algo.selection not in SELECTION_RULES:
        raise _choices_error("selection", config.algo.selection, list(SELECTION_RULES))
    _check(0 < config.algo.keep_prob <= 1, f"keep_prob: must be in (0, 1], got {config.algo.keep_prob}")
    for name in config.report_to:
        if name not in available_reporters():
            raise _choices_error("report_to", name, available_reporters())
    _check(
        NO_REPORTER not in config.report_to or set(config.report_to) == {NO_REPORTER},
        f"report_to: 'none' cannot be combined with a reporter, got {','.join(config.report_to)}",
    )
    if config.lr_scheduler not in LR_SCHEDULERS:
        raise _choices_error("lr_scheduler", config.lr_scheduler, list(LR_SCHEDULERS))
    if config.dtype not in DTYPES:
        raise _choices_error("dtype", config.dtype, list(DTYPES))
    if config.impl not in IMPLS:
        raise _choices_error("impl", config.impl, list(IMPLS))
    validate_device(config.device)
    validate_impl(config.impl, config.device)
    if isinstance(config.resume, str) and not Path(config.resume).is_dir():
        raise ValueError(f"resume: {config.resume!r} is not a checkpoint directory; pass a checkpoint-N folder or "
                         "--resume alone for the newest checkpoint in output_dir")  # fmt: skip
    from tokrl.sampler import sampler_names

    if g.sampler not in sampler_names():
        raise _choices_error("sampler", g.sampler, sampler_names())
    try:
        config.resolved_output_dir()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"output_dir: bad placeholder in {config.output_dir!r}: {err}") from None


def _check_finite(config: TrainConfig) -> None:
    """Every float option must be a finite number: nan/inf would silently disable clipping, flatten the
    sampling distribution or poison the weights after the model has loaded."""
    for key, spec in flat_fields().items():
        value = getattr(getattr(config, spec.section) if spec.section else config, spec.field.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f"{key}: must be a finite number, got {value}")


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def validate_device(device: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N', and a CUDA device only where CUDA is available."""
    import torch

    if not _DEVICE_RE.match(device):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for but CUDA is not available; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")


def validate_impl(impl: str, device: str) -> None:
    """impl='triton' needs the triton package and a CUDA device (or TRITON_INTERPRET=1 for the CPU)."""
    import importlib.util

    import torch

    if impl != "triton":
        return
    if importlib.util.find_spec("triton") is None:
        raise ValueError("impl: 'triton' needs the triton package (pip install triton); or use --impl torch")
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not on_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            "impl: 'triton' on a CPU device needs TRITON_INTERPRET=1 (Triton's slow interpreter); "
            "use --impl torch or --impl auto on the CPU"
        )


def validate_model_name(model: str) -> None:
    """'tiny', an existing local directory, or something shaped like a hub id ('org/name' or 'name')."""
    if model == "tiny" or Path(model).is_dir():
        return
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or not model.strip()
    if looks_like_path:
        raise ValueError(
            f"model: unknown {model!r}; expected one of: 'tiny' (built in), a local model directory "
            "(with config.json), or a Hugging Face hub id such as 'Qwen/Qwen2-1.5B'"
        )
