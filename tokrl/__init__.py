"""tokrl: token-efficient RL for LLM reasoning (S-GRPO, T-SPMO, GRPO) with LoRA and fused log-prob kernels.

    import tokrl
    result = tokrl.train(preset="tiny-multiplication", steps=20)   # or tokrl.train(TrainConfig(...))
    tokrl.evaluate("outputs/run/sft", "multiplication", task_options={"digits_a": 2, "digits_b": 1})

The public API is imported lazily, so `import tokrl` (and `import tokrl.algorithms`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "tokrl.trainer",
    "TrainResult": "tokrl.run.results",
    "evaluate": "tokrl.stages.evaluate",
    "TrainConfig": "tokrl.config",
    "AlgoConfig": "tokrl.config",
    "GenerationConfig": "tokrl.config",
    "LoRAConfig": "tokrl.config",
    "PRESETS": "tokrl.config",
    "load_config": "tokrl.config",
}

__all__ = [
    "PRESETS",
    "AlgoConfig",
    "GenerationConfig",
    "LoRAConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_config",
    "train",
]

if TYPE_CHECKING:
    from tokrl.config import PRESETS, AlgoConfig, GenerationConfig, LoRAConfig, TrainConfig, load_config
    from tokrl.run.results import TrainResult
    from tokrl.stages.evaluate import evaluate
    from tokrl.trainer import train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokrl' has no attribute {name!r}")
