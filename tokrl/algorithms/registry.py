"""Name -> Algorithm class registry: the trainer looks algorithms up here and never branches on names."""

from __future__ import annotations

from collections.abc import Callable

from tokrl.algorithms.base import AlgoConfig, Algorithm
from tokrl.infra.registry import register_in, unknown_choice

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: `@register_algorithm("t-spmo")` makes the class available to `get_algorithm`."""
    return register_in(ALGORITHMS, "algorithm", name)


def get_algorithm(name: str, config: AlgoConfig | None = None) -> Algorithm:
    """Build the registered algorithm `name` with `config` (defaults when None)."""
    if name not in ALGORITHMS:
        raise unknown_choice("algorithm", name, available_algorithms())
    return ALGORITHMS[name](config)


def available_algorithms() -> list[str]:
    return sorted(ALGORITHMS)
