"""LoRA adapter folders (a checkpoint-N folder, or any peft `save_pretrained` output): what they record, checked
before anything loads, and loading one onto its base model.

A LoRA adapter records the model it was trained on (`base_model_name_or_path` in adapter_config.json; for a
tokrl run with a warm start that is the run's `sft` folder, as the path was given at training time).
`adapter_base_model` reads it back (taking `<run>/sft` next to the checkpoint, so a copied or moved run and a
path recorded relative to another working directory resolve to the run's own warm start), and
`check_base_model` refuses a model that is another one: an adapter applied to the wrong base loads without
complaint and evaluates garbage. A local folder is checked for its config and weights first: without that,
peft takes a missing weights file for a hub repository and asks the hub for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tokrl.infra.hub import looks_like_path
from tokrl.models.loading import load_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_files(adapter: str) -> None:
    """A local adapter folder holds a readable adapter_config.json and a non-empty weights file; without this,
    peft takes a missing weights file for a hub repository and asks the hub for it."""
    adapter_base_model(adapter)  # reads adapter_config.json: missing or damaged is one error naming it
    folder = Path(adapter).expanduser()
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in ADAPTER_WEIGHTS):
        raise FileNotFoundError(
            f"adapter: {adapter!r} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}, missing or empty); pass "
            "a complete checkpoint-N folder"
        )


def missing_local_path(name: str) -> bool:
    """True for a path that does not exist and cannot be an adapter on the hub: no hub id (`looks_like_path`),
    no "org/" part (adapters on the hub always have one), or its parent folder exists."""
    path = Path(name).expanduser()
    if path.exists():
        return False
    return looks_like_path(name) or "/" not in name or path.parent.is_dir()


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


def load_with_adapter(name: str, adapter: str | None, dtype: str | None, device: str) -> tuple[torch.nn.Module, Any]:
    """Model `name` and its tokenizer, with the LoRA `adapter` folder or hub id on it when given."""
    from peft import PeftModel

    if is_adapter_dir(name):
        raise ValueError(
            f"model: {name!r} is a LoRA adapter (it holds adapter_config.json and no config.json), not a model; "
            "pass it as --adapter (its base model is read from it)"
        )
    if adapter and missing_local_path(adapter):
        # Fail now, not after the hub's retries for a repository of that name.
        raise FileNotFoundError(f"adapter: {adapter!r} does not exist; pass a checkpoint-N folder of a run")
    if adapter and Path(adapter).expanduser().is_dir():
        check_adapter_files(adapter)
    model, tokenizer = load_model(name, dtype=dtype, device=device)
    if adapter:
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except Exception as err:  # noqa: BLE001 (peft, safetensors and torch each raise their own types)
            cause = " ".join(str(err).split())[:240]
            raise ValueError(
                f"adapter: cannot load {adapter!r} onto {name!r} ({type(err).__name__}: {cause}); the adapter is "
                "damaged, or was trained on another model or with other LoRA settings"
            ) from err
    return model, tokenizer
