"""The lock file: which source, revision and sha256 each pulled or imported model is pinned to.

``./zoo.lock`` when the project has one, else ``$ZOO_HOME/zoo.lock``. JSON, sorted, one entry
per canonical model name::

    {"format": 1, "models": {"timm:resnet10t.c3_in1k": {"source": "timm", "revision": "...",
      "method": "pull", "pinned": "2026-11-22T10:00:00+00:00",
      "files": [{"filename": "model.safetensors", "sha256": "...", "size": 21342, ...}]}}}
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from . import paths
from .errors import WeightsError
from .fileio import atomic_write_json

LOCK_FORMAT = 1


@attrs.frozen
class LockedFile:
    filename: str
    sha256: str
    size: int
    url: str | None = None
    repo_id: str | None = None


@attrs.frozen
class LockEntry:
    name: str
    source: str
    files: tuple[LockedFile, ...]
    revision: str | None = None
    method: str = "pull"  # "pull" or "import"
    pinned: str = attrs.field(factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def file(self, filename: str) -> LockedFile | None:
        return next((item for item in self.files if item.filename == filename), None)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data.pop("name")
        data["files"] = [{k: v for k, v in attrs.asdict(f).items() if v is not None} for f in self.files]
        return data


class LockFile:
    """An in-memory view of one lock file; :meth:`pin` writes it back atomically."""

    def __init__(self, path: Path, entries: dict[str, LockEntry]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def read(cls, path: Path | None = None) -> LockFile:
        path = path or paths.lock_path()
        if not path.exists():
            return cls(path, {})
        where = paths.display(path)
        text = path.read_text()
        if not text.strip():  # `touch zoo.lock` opts a project into its own lock file
            return cls(path, {})
        try:
            data = json.loads(text)
            if data.get("format") != LOCK_FORMAT:
                raise WeightsError(f"{where}: lock format {data.get('format')!r} is not supported (expected {LOCK_FORMAT})")
            entries = {}
            for name, raw in data.get("models", {}).items():
                files = tuple(LockedFile(**item) for item in raw.pop("files"))
                entries[name] = LockEntry(name=name, files=files, **raw)
        except WeightsError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise WeightsError(
                f"{where}: not a valid lock file ({exc}); restore it from version control or delete it and re-run `zoo pull`"
            ) from None
        return cls(path, entries)

    def get(self, name: str) -> LockEntry | None:
        return self.entries.get(name)

    def pin(self, entry: LockEntry) -> None:
        self.entries[entry.name] = entry
        atomic_write_json(
            self.path,
            {"format": LOCK_FORMAT, "models": {name: e.to_dict() for name, e in sorted(self.entries.items())}},
        )
