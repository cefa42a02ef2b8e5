"""Data sets that ship inside Zoo, named ``bundled:NAME`` wherever a data folder is expected.

``bundled:digits`` is the UCI handwritten digits (1,797 8×8 images, classes ``0`` … ``9``) that
``zoo demo`` also uses. The first use writes it as an image folder under
``$ZOO_HOME/datasets/NAME`` (into a temporary folder renamed into place, so a killed write leaves
nothing half-made); later uses read that folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import paths
from .errors import DataError, did_you_mean

PREFIX = "bundled:"


def _write_digits(folder: Path) -> None:
    from .demo import _write_images, load_digits  # the demo owns the digits file and how they are drawn

    images, labels = load_digits()
    _write_images(images, labels, folder)


BUNDLED: dict[str, Callable[[Path], None]] = {"digits": _write_digits}


def is_bundled(data: str | Path) -> bool:
    return str(data).startswith(PREFIX)


def data_path(data: str | Path) -> Path:
    """The folder behind a data argument: ``bundled:NAME`` is written once and reused; a path stays itself."""
    if not is_bundled(data):
        return Path(data)
    name = str(data)[len(PREFIX) :]
    if name not in BUNDLED:
        raise DataError(f"{data}: no bundled data set '{name}'{did_you_mean(name, BUNDLED)} (bundled: {', '.join(sorted(BUNDLED))})")
    folder = paths.zoo_home() / "datasets" / name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        BUNDLED[name](staging)
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first: its folder stands
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
