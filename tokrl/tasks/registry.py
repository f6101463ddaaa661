"""Name -> Task class registry: `get_task(name, **options)` builds tasks; the trainer never branches on names."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from tokrl.infra.registry import register_in, unknown_choice
from tokrl.tasks.base import Task

TASKS: dict[str, type[Task]] = {}

T = TypeVar("T", bound=type[Task])


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: `@register_task("svamp")` makes the Task subclass available to `get_task`."""
    return register_in(TASKS, "task", name)


def get_task(name: str, **options: Any) -> Task:
    """Build the registered task `name` with its keyword `options` (see each task class for them)."""
    if name not in TASKS:
        raise unknown_choice("task", name, available_tasks())
    cls = TASKS[name]
    accepted = [
        param.name
        for param in inspect.signature(cls).parameters.values()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"task {name!r}: unknown option(s) {unknown}; accepted options: {accepted}")
    return cls(**options)


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(TASKS)
