"""The backbone-source interface and the name index that keeps ``zoo list`` free of torch.

A source (``timm``, ``torchvision``, ``hf-hub``, ``file`` or a plugin's) is a light object: its
module must not import torch at import time. Listing architecture names needs the library
itself, so each indexable source reports a cheap ``index_version()`` (the installed library's
version, read from package metadata) and Zoo keeps the names it lists under
``$ZOO_HOME/index/<source>-<version>.json``, rebuilding the file when the version changes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from . import paths
from .fileio import atomic_write_json

if TYPE_CHECKING:
    from .names import ModelRef
    from .registry import Registry
    from .specs import ResolvedModel

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


@attrs.frozen
class IndexEntry:
    """One architecture a source can build, with its pretrained-weight tags."""

    name: str
    tags: tuple[str, ...] = ()

    @property
    def pretrained(self) -> bool:
        return bool(self.tags)


@runtime_checkable
class Source(Protocol):
    """What a backbone source provides. Methods other than ``index_version`` may import torch."""

    name: str
    priority: int | None  # order for bare names (lower first); None: only reachable as "name:..."
    tagged: bool  # the first "." of a name separates a tag
    revisioned: bool  # "@" separates a revision
    description: str

    def index_version(self) -> str | None:
        """A string that changes whenever the listable names may change; None: not listable."""

    def build_index(self) -> Sequence[IndexEntry]:
        """Every architecture this source can build, with pretrained tags."""

    def resolve(self, ref: ModelRef, registry: Registry) -> ResolvedModel:
        """Resolve a parsed name; raise :class:`zoo_core.errors.UnknownNameError` if unknown."""

    def create(
        self,
        resolved: ResolvedModel,
        *,
        registry: Registry,
        weights_path: Path | None,
        num_classes: int | None,
        **kwargs: Any,
    ) -> Any:
        """Build the model, loading ``weights_path`` when given (already verified)."""


class SourceIndex:
    """The names one source lists, loaded from (or written to) the index cache."""

    def __init__(self, source: str, version: str, entries: Iterable[IndexEntry]) -> None:
        self.source = source
        self.version = version
        self.entries = {entry.name: entry for entry in entries}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> IndexEntry | None:
        return self.entries.get(name)

    def names(self) -> list[str]:
        return list(self.entries)

    def match(self, pattern: str | None) -> list[IndexEntry]:
        """Entries whose name (or ``name.tag``) matches a shell-style pattern, case-insensitive."""
        if not pattern:
            return list(self.entries.values())
        pattern = pattern.lower()
        found = []
        for entry in self.entries.values():
            names = [entry.name, *(f"{entry.name}.{tag}" for tag in entry.tags)]
            if any(fnmatch.fnmatchcase(candidate.lower(), pattern) for candidate in names):
                found.append(entry)
        return found


def index_file(source: str, version: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{source}-{version}")
    return paths.zoo_home() / "index" / f"{safe}.json"


def load_index(source: Source) -> SourceIndex | None:
    """The source's name index, rebuilt (once) when its version changed; None if not listable."""
    version = source.index_version()
    if version is None:
        return None
    path = index_file(source.name, version)
    try:
        data = json.loads(path.read_text())
        if data.get("format") == INDEX_FORMAT and data.get("version") == version:
            entries = (IndexEntry(name, tuple(tags)) for name, tags in data["entries"])
            return SourceIndex(source.name, version, entries)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or unreadable: rebuild below
    # said on every console (the CLI shows this logger's INFO): the first listing otherwise sits silent for seconds
    log.info("indexing %s names, about 5 to 10 s, once per %s version (%s); later listings read %s", source.name, source.name, version, path)
    entries = list(source.build_index())
    atomic_write_json(
        path,
        {
            "format": INDEX_FORMAT,
            "source": source.name,
            "version": version,
            "entries": [[entry.name, list(entry.tags)] for entry in entries],
        },
    )
    return SourceIndex(source.name, version, entries)
