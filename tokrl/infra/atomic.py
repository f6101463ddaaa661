"""Run files are replaced atomically, never rewritten in place.

A file that a kill -9, a full disk or a power cut may interrupt is written to a temporary sibling
(`.tmp-<name>-<random>` in the same directory, so the rename never crosses filesystems), flushed and
fsynced, then renamed over the target with `os.replace` (atomic on POSIX), and the directory entry is
fsynced. A reader therefore sees the old file or the new one, never half of either. Temporary siblings
left by a killed writer carry TEMP_FILE_PREFIX, which `tokrl.run.run_dir` removes when a run starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

TEMP_FILE_PREFIX = ".tmp-"


def fsync_dir(path: str | Path) -> None:
    """Make the directory's entries (a rename, a new file) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def write_lines_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """Replace `path` with `lines` (each already ending in a newline) atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_FILE_PREFIX}{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically."""
    write_lines_atomic(path, [text])


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root` (before renaming a freshly written folder into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def copy_tree_atomic(source: str | Path, target: str | Path, temp_prefix: str) -> None:
    """Copy the folder `source` to `target` (which must not exist) through a temporary sibling and one rename."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix, dir=target.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        fsync_tree(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
