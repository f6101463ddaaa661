"""Optional dependencies (pip extras): import one, or fail with a message that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package a feature needs is not installed; the message names the `tokrl[...]` extra."""


def import_extra(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import `module` or raise MissingExtraError naming `feature` (what asked for it) and `extra`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs the {module!r} package, which cannot be imported ({err}); "
            f"install it with: pip install 'tokrl[{extra}]'"
        ) from None
