"""Hugging Face hub ids and local paths: the one rule that says which a name can be.

A hub id is "name" or "org/name": letters, digits, "_", "-" and ".", starting with a letter or a digit. A name
that cannot be one (it starts with ".", "/" or "~", holds more than one "/", is blank or has other characters)
can only be a local path; where that path does not exist, callers report a missing file instead of asking the
hub for it.
"""

from __future__ import annotations

import os
import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_path(name: str) -> bool:
    """True for a name that cannot be a hub id, so it can only be a local path."""
    return name.startswith((".", "/", "~", os.sep)) or name.count("/") > 1 or not HUB_ID.match(name)
