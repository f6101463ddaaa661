"""The one decorator behind every name -> class registry (algorithms, tasks): register, name, refuse clashes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

C = TypeVar("C", bound=type)


def register_in(table: dict[str, type], kind: str, name: str) -> Callable[[C], C]:
    """Class decorator storing the class in `table` under `name` and setting its `name` attribute.

    Registering the same class twice is a no-op; another class under a taken name raises ValueError.
    `kind` ("algorithm", "task") names the registry in that error.
    """

    def decorate(cls: C) -> C:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered to {table[name].__name__}")
        cls.name = name
        table[name] = cls
        return cls

    return decorate
