"""Training configuration: the sections (tokrl.config.sections), TrainConfig and its flat keys (schema), named
presets, building a config from presets, YAML files and overrides (loading), and checking it once (checks).

Layer: above the components whose names it checks (algorithms, tasks, sampler, models, infra); the stages, run
management and the trainer import it. Names are imported lazily, so the CLI can read the schema without loading
the registries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AlgoConfig": "tokrl.algorithms.base",
    "EvalConfig": "tokrl.config.sections",
    "GenerationConfig": "tokrl.config.sections",
    "LoopConfig": "tokrl.config.sections",
    "LoRAConfig": "tokrl.config.sections",
    "LossConfig": "tokrl.config.sections",
    "OptimConfig": "tokrl.config.sections",
    "RunConfig": "tokrl.config.sections",
    "WarmStartConfig": "tokrl.config.sections",
    "TrainConfig": "tokrl.config.schema",
    "SECTIONS": "tokrl.config.schema",
    "flat_fields": "tokrl.config.schema",
    "DEFAULT_PRESET": "tokrl.config.presets",
    "PAPER_LORA_TARGETS": "tokrl.config.presets",
    "PRESETS": "tokrl.config.presets",
    "config_from_dict": "tokrl.config.loading",
    "load_config": "tokrl.config.loading",
    "validate_config": "tokrl.config.checks",
}

__all__ = [
    "AlgoConfig",
    "DEFAULT_PRESET",
    "EvalConfig",
    "GenerationConfig",
    "LoRAConfig",
    "LoopConfig",
    "LossConfig",
    "OptimConfig",
    "PAPER_LORA_TARGETS",
    "PRESETS",
    "RunConfig",
    "SECTIONS",
    "TrainConfig",
    "WarmStartConfig",
    "config_from_dict",
    "flat_fields",
    "load_config",
    "validate_config",
]

if TYPE_CHECKING:
    from tokrl.algorithms.base import AlgoConfig
    from tokrl.config.checks import validate_config
    from tokrl.config.loading import config_from_dict, load_config
    from tokrl.config.presets import DEFAULT_PRESET, PAPER_LORA_TARGETS, PRESETS
    from tokrl.config.schema import SECTIONS, TrainConfig, flat_fields
    from tokrl.config.sections import (
        EvalConfig,
        GenerationConfig,
        LoopConfig,
        LoRAConfig,
        LossConfig,
        OptimConfig,
        RunConfig,
        WarmStartConfig,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokrl.config' has no attribute {name!r}")
