"""Dataset readers: the data layouts a task reads, and which one reads a given data path.

Plugins register readers through ``zoo_register_datasets``. Each says which task's items it
reads and recognises its own layout, so ``--data DATA`` finds the right reader without being
told; ``--data-format NAME`` forces one when a path would match several (or none). Readers
are tried in ``priority`` order, lower first, so that specific layouts (Tiny ImageNet, which
also has class folders) win over generic ones (a folder of class folders).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import DataError, did_you_mean

READER_ATTRIBUTES = ("name", "task", "layout", "priority", "recognises", "read")


@runtime_checkable
class DatasetReader(Protocol):
    """Reads one data layout for one task.

    ``name`` is what ``--data-format`` selects (``"image-folder"``); ``task`` the task whose
    items it reads (``"classification"``); ``layout`` one line saying what it expects, shown
    when a path matches no reader; ``priority`` orders auto-detection (lower is tried first).
    """

    name: str
    task: str
    layout: str
    priority: int

    def recognises(self, root: Path) -> bool:
        """Whether ``root`` (a folder or a file) looks like this reader's layout; cheap, never raises."""
        ...

    def read(self, root: Path) -> Any:
        """The items under ``root``, in the form the task defines; a malformed layout is a ``DataError``."""
        ...


def by_priority(readers: Sequence[DatasetReader]) -> list[DatasetReader]:
    """Readers in the order auto-detection tries them: ``priority``, then name."""
    return sorted(readers, key=lambda reader: (reader.priority, reader.name))


def pick_reader(readers: Sequence[DatasetReader], root: Path, data_format: str | None, task: str) -> DatasetReader:
    """The reader for ``root``: the one named ``data_format``, else the first that recognises it.

    :param readers: the task's readers (``Registry.readers_for(task)``).
    :param root: the data path, a folder or a file.
    :param data_format: a reader name (``--data-format``), or ``None`` to detect the layout.
    :param task: the task's name, for messages.
    :raises DataError: for a missing path, an unknown reader name, or a path no reader recognises.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such data folder or file")
    ordered = by_priority(readers)
    names = [reader.name for reader in ordered]
    if data_format is not None:
        for reader in ordered:
            if reader.name == data_format:
                return reader
        raise DataError(
            f"--data-format: unknown {task} data format '{data_format}'{did_you_mean(data_format, names)} "
            f"(formats: {', '.join(names) or 'none'}; run `zoo plugins` to see plugins)"
        )
    for reader in ordered:
        if reader.recognises(root):
            return reader
    listing = ", ".join(f"{reader.name} ({reader.layout})" for reader in ordered) or "none"
    raise DataError(f"{root}: matches no {task} data layout; readers: {listing}; pass --data-format NAME to force one")
