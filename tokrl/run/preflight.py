"""Options checked before anything is written: the task's splits against the batch, LoRA targets, prompt lengths.

Both checks need the model's architecture and tokenizer, not its weights, and both used to run only after
the warm start had written output_dir/sft (a wrong `--lora-target-modules` or a `--max-new-tokens` that
leaves no room for the prompts then failed minutes in, after replacing an earlier run's warm start under
--overwrite). `check_model_options` reads the base model's config and tokenizer (the warm start keeps
both), builds the architecture on the meta device (no memory, no random draws) and wraps it with the
run's LoRA settings through the same `apply_lora` the trainer calls, so every check that `apply_lora`
makes runs here first, and checks the prompt lengths with the same `check_prompt_lengths`.

A hub model that is neither cached nor reachable cannot be checked this early; the trainer then checks
it after loading, as before (`check_model_options` returns False).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from tokrl.config.schema import TrainConfig
from tokrl.infra import distributed
from tokrl.models.lora import apply_lora
from tokrl.models.names import TINY_NAME
from tokrl.models.tiny import tiny_config
from tokrl.models.tokenizer import build_char_tokenizer
from tokrl.run.context import check_prompt_lengths
from tokrl.tasks import Task

logger = logging.getLogger("tokrl")


def model_skeleton_inputs(name: str) -> tuple[Any, PreTrainedTokenizerBase] | None:
    """(model config, tokenizer) of `name` without its weights; None when they cannot be read yet."""
    from transformers import AutoTokenizer

    if name == TINY_NAME:
        return tiny_config(), build_char_tokenizer(padding_side="left")
    path = os.path.expanduser(name)
    local = os.path.isdir(path)
    source = path if local else name
    try:
        return (
            AutoConfig.from_pretrained(source, local_files_only=not local),
            AutoTokenizer.from_pretrained(source, local_files_only=not local),
        )
    except (OSError, ValueError) as err:
        if local:
            raise ValueError(f"model: cannot read the config or tokenizer of {name!r} ({err})") from None
        return None  # not cached: loading the model reports it (or downloads it) later


def check_model_options(config: TrainConfig, task: Task) -> bool:
    """Refuse bad LoRA targets and prompts too long for the context (ValueError naming the option) before
    any weights load; returns False when the model could not be inspected yet (see the module doc)."""
    inputs = model_skeleton_inputs(config.model)
    if inputs is None:
        return False
    model_config, tokenizer = inputs
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # as load_model does: prompts are padded for generation
    tokenizer.padding_side = "left"
    check_prompt_lengths(task, tokenizer, model_config, config.generation.max_new_tokens)
    lora = config.lora
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the run's random stream stays untouched
        skeleton = AutoModelForCausalLM.from_config(model_config)
        try:
            apply_lora(skeleton, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
        except ValueError as err:
            raise ValueError(f"lora_target_modules: {err}") from None
    return True


def check_splits(config: TrainConfig, train_size: int, test_size: int, world_size: int) -> None:
    """Refuse a train split smaller than one step's prompts, an empty test split, and a step that the
    processes cannot share evenly (before any weights load)."""
    if train_size < config.prompts_per_step:
        raise ValueError(
            f"prompts_per_step: {config.prompts_per_step} prompts per step but the {config.task!r} train split has "
            f"only {train_size} examples"
        )
    if test_size == 0:
        raise ValueError(f"task: the {config.task!r} test split is empty; evaluation needs examples")
    distributed.check_world_size(config.prompts_per_step, world_size)
