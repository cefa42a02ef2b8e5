"""An exclusive lock on a folder, held by one process and released by the kernel when it dies.

``flock`` (``msvcrt.locking`` on Windows) on a ``.lock`` file: a second process is refused at
once, never kept waiting, and learns who holds the lock (pid, host, start time) from the
file's content. A crashed holder leaves no stale lock: the operating system drops it with the
process, and the next holder overwrites the recorded details. (The ``filelock`` package
truncates the file on every attempt, so a refused process could not read who holds it.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RunError

LOCK_NAME = ".lock"


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _in_use(folder: Path, purpose: str, holder: dict[str, Any]) -> RunError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('started', '?')})" if holder else "another process"
    return RunError(f"{folder}: this {purpose} is in use by {who}; wait for that run to end, or choose another --run-dir")


@contextlib.contextmanager
def exclusive(folder: Path, *, purpose: str) -> Iterator[None]:
    """Hold ``folder/.lock`` for the block, or raise :class:`RunError` naming the holder.

    :param purpose: what the folder is, for the message (``"run folder"``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise _in_use(folder, purpose, _holder(fd))
        details = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(details).encode())
        yield
    finally:
        os.close(fd)  # closing drops the lock


def ensure_free(folder: Path, *, purpose: str) -> None:
    """Raise the error :func:`exclusive` would, without holding the lock (checks before starting)."""
    path = folder / LOCK_NAME
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        if not _try_lock(fd):
            raise _in_use(folder, purpose, _holder(fd))
    finally:
        os.close(fd)


def is_held(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s lock now (taking it for a moment if not)."""
    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # drops the lock if this process took it
