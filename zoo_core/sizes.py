"""Byte sizes as users write them (``2GB``, ``512MiB``, ``0``) and how much memory is free.

Sizes follow the convention of ``du``/``free`` users: ``K``/``M``/``G``/``T`` with or without
``B`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB`` powers of 1024. Free memory is read
from the operating system without psutil (not a dependency).
"""

from __future__ import annotations

import os
import re

from .errors import ZooError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


class SizeError(ZooError):
    """A value that should be a byte size is not one."""


def parse_size(text: str | int, *, what: str) -> int:
    """``text`` in bytes; ``what`` names the flag or key in the error (``--cache-budget``)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise SizeError(f"{what} must be a size of at least 0, got {text}")
        return text
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise SizeError(f"{what} must be a size such as 512MB, 2GB or 1.5GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(count: float) -> str:
    """``1.5 GB``: decimal units, as :func:`parse_size` reads them back."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``), else free pages; ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
