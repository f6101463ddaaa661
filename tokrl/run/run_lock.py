"""One run per output directory at a time: an exclusive lock on `output_dir/.tokrl-lock`.

The lock is an advisory `flock` on that file, held for as long as the run's process lives; the file holds
the owner's pid, host and start time, for the message a second run gets. The kernel drops a `flock`
when its process dies (kill -9 included), so a lock left behind by a dead run is stale by construction:
the next run takes it over, and says so. Releasing removes the file while still holding the lock; a run
that opened the file just before it was removed notices that its lock is on a deleted file and retries.

Where `flock` does not exist or the filesystem refuses it (Windows, some network filesystems), the file
itself is the lock (created exclusively), and a stale one is recognised by its pid no longer running on
this host.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("tokrl")

LOCK_FILE = ".tokrl-lock"
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class OutputDirBusyError(ValueError):
    """Another live run holds the output directory."""


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {since}"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_running(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class RunLock:
    """`acquire()` makes this process the only run in `output_dir` (creating the folder), `release()` ends it."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None
        self.created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise OutputDirBusyError naming the run that holds it."""
        if self.held:
            return
        self.created_dir = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            self._fd = self._try_flock() if fcntl is not None else None
            if self._fd is None and (fcntl is None or self._flock_unsupported):
                self._fd = self._try_exclusive_file()
        self._write_holder()

    _flock_unsupported = False

    def _busy(self, info: dict[str, Any]) -> OutputDirBusyError:
        return OutputDirBusyError(
            f"output_dir: {str(self.output_dir)!r} is in use by another tokrl run ({_holder_text(info)}); wait for "
            "it to finish or choose another --output-dir"
        )

    def _try_flock(self) -> int | None:
        """The locked descriptor, None to retry (the file was replaced under us, or flock is unsupported)."""
        previous = _read_holder(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _BUSY:
                raise self._busy(_read_holder(self.path)) from None
            self._flock_unsupported = True  # e.g. ENOLCK on a network filesystem: fall back to the file itself
            return None
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed the file between our open and our flock: lock the new one
            os.close(fd)
            return None
        if previous.get("pid") not in (None, os.getpid()):
            holder = _holder_text(previous)
            logger.warning("taking over the lock of %s in %s: that run is gone", holder, self.output_dir)
        return fd

    def _try_exclusive_file(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read_holder(self.path)
            alive = info.get("host") != socket.gethostname() or _pid_running(info.get("pid"))
            if alive and info:
                raise self._busy(info) from None
            logger.warning("removing the stale lock of %s in %s: that run is gone", _holder_text(info), self.output_dir)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return None

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go; safe to call twice."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:  # a Trainer dropped without run() (tests, notebooks) must not keep the dir locked
        try:
            self.release()
        except Exception:  # noqa: BLE001 (at interpreter exit the modules it needs may be gone; the OS unlocks)
            pass

    def release_and_tidy(self) -> None:
        """Release, and remove output_dir again when acquire created it and nothing else was written there."""
        self.release()
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.output_dir.rmdir()  # only succeeds when empty
