"""What `tokrl eval` evaluates when flags are left out: the run's task settings (the adapter's base model is
`tokrl.models.adapters.adapter_base_model`).

Task defaults, first found wins: the checkpoint's own config.yaml (task, task options, max_new_tokens),
the warm start's sft_config.json (task and options), else the preset (`--preset`, default the embedded
default) when it is for the same task. Flags given explicitly win; task options given explicitly are laid
over the defaults' options of the same task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokrl.config.loading import load_config
from tokrl.config.presets import DEFAULT_PRESET
from tokrl.run.warm_start import SFT_CONFIG


@dataclass
class EvalDefaults:
    """Task settings for an evaluation and where they came from ("" when nothing provided them)."""

    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    source: str = ""


def _from_checkpoint(adapter: str | None) -> EvalDefaults | None:
    path = Path(adapter).expanduser() / "config.yaml" if adapter else None
    if path is None or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        task, options, generation = data["task"], data.get("task_options") or {}, data.get("generation") or {}
        tokens = generation.get("max_new_tokens")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None  # not a tokrl checkpoint's config: no defaults from it
    if not isinstance(task, str) or not isinstance(options, dict) or not isinstance(tokens, int | None):
        return None
    return EvalDefaults(task, dict(options), tokens, str(path))


def _from_warm_start(model: str | None) -> EvalDefaults | None:
    path = Path(model).expanduser() / SFT_CONFIG if model else None
    if path is None or not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        return EvalDefaults(settings["task"], dict(settings.get("task_options") or {}), None, str(path))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _from_preset(preset: str | None) -> EvalDefaults:
    name = preset or DEFAULT_PRESET
    config = load_config(name, validate=False)
    return EvalDefaults(config.task, dict(config.task_options), config.generation.max_new_tokens, f"preset {name!r}")


def eval_defaults(model: str | None, adapter: str | None, preset: str | None) -> EvalDefaults:
    """The first of: the adapter's checkpoint config, the model's warm-start settings, the preset."""
    found = _from_checkpoint(adapter) or _from_warm_start(model)
    if found is not None and found.max_new_tokens is None:
        same_task = _from_preset(preset)
        if same_task.task == found.task:
            found.max_new_tokens = same_task.max_new_tokens
    return found or _from_preset(preset)


def resolve_task(
    task: str | None, options: dict[str, Any] | None, max_new_tokens: int | None, defaults: EvalDefaults
) -> tuple[str, dict[str, Any], int, str]:
    """(task, task options, max_new_tokens, where the defaults came from or "") after explicit flags."""
    if task is not None and task != defaults.task:  # another task: the defaults say nothing about it
        return task, dict(options or {}), max_new_tokens or 200, ""
    chosen = defaults.task if task is None else task
    if chosen is None:
        raise ValueError("task: no --task given and none could be read from the adapter or model; pass --task")
    merged = {**defaults.task_options, **(options or {})}
    return chosen, merged, max_new_tokens or defaults.max_new_tokens or 200, defaults.source
