"""Names that mean something of their own wherever a model or its LoRA targets are named (config, CLI, loading),
and the rule for the one special LoRA target entry. Light on purpose (no torch): the config schema reads it."""

from __future__ import annotations

from collections.abc import Sequence

TINY_NAME = "tiny"  # the built-in tiny model (tokrl.models.tiny)
ALL_LINEAR = "all-linear"  # every linear layer of the decoder (tokrl.models.lora_targets)


def is_all_linear(targets: str | Sequence[str]) -> bool:
    """True for "all-linear" given as a string or as the one entry of a list (the config's form)."""
    entries = [targets] if isinstance(targets, str) else list(targets)
    return len(entries) == 1 and entries[0].lower() == ALL_LINEAR


def target_entries(targets: str | Sequence[str]) -> list[str]:
    """The target list as given; "all-linear" may only stand alone (ValueError naming the list otherwise)."""
    entries = [targets] if isinstance(targets, str) else list(targets)
    if not is_all_linear(entries) and any(entry.lower() == ALL_LINEAR for entry in entries):
        raise ValueError(f"lora_target_modules: {ALL_LINEAR!r} stands alone, got {','.join(entries)}")
    return entries
