"""Atomic file writes and streaming sha256.

A file under its final name is always complete: writers fill a uniquely named temporary file
in the same folder, flush and fsync it, then ``os.replace`` it over the final name (atomic on
POSIX and Windows) and fsync the folder so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20
_UMASK = os.umask(0)  # read once: swapping the umask later would race with other threads
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a handle to a temporary file that becomes ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give what a plain open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_save_with(path: Path | str, save: Callable[[IO[bytes]], None]) -> None:
    """Let ``save(handle)`` write the content, e.g. ``lambda f: torch.save(obj, f)``."""
    with atomic_writer(path, "wb") as handle:
        save(handle)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Delete temporaries a killed writer of ``name`` left behind in ``folder``."""
    for stale in folder.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
