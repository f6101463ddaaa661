"""The one decorator behind every name -> class registry (algorithms, tasks, samplers, reporters): register, name,
refuse clashes; and the one error for an unknown name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
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


def unknown_choice(kind: str, name: str, choices: Sequence[str]) -> ValueError:
    """The one error for a name no registry (or option list) knows: "kind: unknown 'x' (did you mean 'y'?);
    expected one of: a, b"."""
    close = difflib.get_close_matches(name, list(choices), n=3) if isinstance(name, str) else []
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"{kind}: unknown {name!r}{hint}; expected one of: {', '.join(choices)}")
