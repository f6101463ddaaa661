"""What `tokrl eval` evaluates when flags are left out: the adapter's base model and the run's task settings.

A LoRA adapter records the model it was trained on (`base_model_name_or_path` in adapter_config.json; for
a tokrl run with a warm start that is the run's `sft` folder, as the path was given at training time).
`adapter_base_model` reads it back (taking `<run>/sft` next to the checkpoint, so a copied or moved run
and a path recorded relative to another working directory resolve to the run's own warm start), and
`check_base_model` refuses a `--model` that is another model: an adapter applied to the wrong base loads
without complaint and evaluates garbage.

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

from tokrl.config import DEFAULT_PRESET, load_config

ADAPTER_CONFIG = "adapter_config.json"
SFT_CONFIG = "sft_config.json"


def is_adapter_dir(path: str) -> bool:
    """A folder holding a LoRA adapter and no model of its own (what `--model` must not be)."""
    folder = Path(path).expanduser()
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def _adapter_config(adapter: Path) -> dict[str, Any]:
    path = adapter / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"adapter: {str(adapter)!r} has no {ADAPTER_CONFIG}; pass a checkpoint-N folder"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"adapter: cannot read {path} ({err}); the adapter is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"adapter: {path} holds {type(data).__name__}, not a JSON object; the adapter is damaged")
    return data


def adapter_base_model(adapter: str) -> str | None:
    """The model `adapter` was trained on, as a name or a path that resolves from here (None: not recorded).

    A recorded path whose folder sits beside the checkpoint (`<run>/sft`) is taken from there: that is the
    run's own warm start also when the run was copied or moved, or trained from another working directory."""
    folder = Path(adapter).expanduser()
    recorded = _adapter_config(folder).get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded:
        return None
    beside = folder.parent / Path(recorded).name
    if recorded != beside.name and (beside / "config.json").is_file():
        return str(beside)
    return recorded


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_base_model(model: str, adapter: str) -> None:
    """Refuse a `model` other than the one `adapter` records (ValueError naming both)."""
    base = adapter_base_model(adapter)
    if base is not None and not _same_model(model, base):
        raise ValueError(
            f"model: the adapter {adapter!r} was trained on {base!r} (base_model_name_or_path in its "
            f"{ADAPTER_CONFIG}), not on {model!r}; drop --model to evaluate it on its own base"
        )


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
