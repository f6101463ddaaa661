"""Building a TrainConfig: presets, YAML files and `--key value` overrides, each value coerced to its field's type.

Precedence in `load_config`: dataclass defaults < preset < YAML file < overrides. One exception: a preset's
`num_threads` gives way to OMP_NUM_THREADS in the environment (the user's own setting); then num_threads is 0,
torch's default, which reads that variable. A YAML file or an override still sets num_threads.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tokrl.config.checks import validate_config
from tokrl.config.presets import DEFAULT_PRESET, PRESETS
from tokrl.config.schema import SECTIONS, TrainConfig, flat_fields
from tokrl.infra.registry import unknown_choice


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
        raise unknown_choice("preset", preset, sorted(PRESETS))
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
