"""TrainConfig: the run-level sections flat, then the nested ones; and the flat keys every field has.

Flat keys: every field also has one flat name, used by `--key value`, `load_config(**overrides)` and flat YAML
files: run-level fields by their name, `generation` and `algo` fields by their name (`temperature`,
`replay_prob`), `lora` fields with a `lora_` prefix (`lora_r`, `lora_alpha`). Nested YAML (`lora: {r: 8}`) is
accepted too. The resolved config is written nested (`to_dict`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tokrl.algorithms.base import AlgoConfig
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

S = TypeVar("S")

# section name -> flat-key prefix
SECTIONS: dict[str, str] = {"generation": "", "lora": "lora_", "algo": ""}


@dataclass
class TrainConfig(LoopConfig, EvalConfig, WarmStartConfig, LossConfig, OptimConfig, RunConfig):
    """Everything a run needs. Defaults are the paper's settings for real models; see tokrl.config.presets.

    The run-level sections' fields are TrainConfig's own attributes, in the order `to_dict` writes them:
    RunConfig, OptimConfig, LossConfig, WarmStartConfig, EvalConfig, LoopConfig (a dataclass lays out the fields
    of its bases from the last base to the first), then the nested sections.
    """

    FLAT_SECTIONS: ClassVar[tuple[type, ...]] = (
        RunConfig,
        OptimConfig,
        LossConfig,
        WarmStartConfig,
        EvalConfig,
        LoopConfig,
    )

    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Rollout sampling."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapter."})
    algo: AlgoConfig = field(default_factory=AlgoConfig, metadata={"help": "Algorithm options."})

    def check(self) -> None:
        """Every section's own check (names against the registries and what needs two sections:
        tokrl.config.checks)."""
        for section in self.FLAT_SECTIONS:
            section.check(self)
        self.generation.check()
        self.lora.check()
        self.algo.check()

    def section(self, cls: type[S]) -> S:
        """A copy of the run-level section `cls` (e.g. LossConfig) with this config's values."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The nested plain-data form (what YAML files and checkpoints hold)."""
        return dataclasses.asdict(self)

    def resolved_output_dir(self) -> Path:
        """output_dir with `{field}` placeholders filled from the run-level fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SECTIONS}
        return Path(self.output_dir.format(**values))


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
