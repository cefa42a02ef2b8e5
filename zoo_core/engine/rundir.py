"""The run folder: what a run was, its metrics, and checkpoints that survive being killed.

Layout::

    RUN/run.json          recipe, model, task, data, seed: what --resume must match
    RUN/recipe.json       the resolved recipe (after --set overrides)
    RUN/provenance.json   where the starting weights came from (and the transfer plan)
    RUN/baseline.json     the starting weights' validation losses and metrics, before any step
    RUN/metrics.jsonl     one row per epoch
    RUN/failed.json       what stopped the run, when an error did (``zoo runs``)
    RUN/checkpoints/last.pt, last.prev.pt   everything --resume needs (optimizer state included)
    RUN/checkpoints/best.pt, stage-<i>-<name>.pt   weights and metadata, as --keep chooses

``last.pt`` is rotated to ``last.prev.pt`` before each new one is written (atomically), so a
good checkpoint exists at every instant; resuming falls back through them and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import locking
from ..checkpoint import save_checkpoint, torch_load
from ..errors import CheckpointError, RunError
from ..fileio import atomic_write_json, fsync_dir, remove_stale_temporaries
from ..report import BASELINE_FILE, FAILURE_FILE

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("recipe", "model", "task")


class RunFolder:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    @property
    def record_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def read_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RunError(f"{self.record_file}: unreadable run record ({exc})") from None

    # -- starting and resuming -------------------------------------------------------------------

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the folder for a run; a second process gets a :class:`RunError` naming the holder."""
        return locking.exclusive(self.path, purpose="run folder")

    def check(self, record: Mapping[str, Any], *, resume: bool) -> None:
        """Check ``--resume`` against what is on disk, or refuse to overwrite an existing run. Writes nothing."""
        locking.ensure_free(self.path, purpose="run folder")
        self._check_record(record, resume=resume)

    def _check_record(self, record: Mapping[str, Any], *, resume: bool) -> None:
        existing = self.read_record()
        if resume:
            if existing is None:
                raise RunError(f"{self.path}: nothing to resume (no run.json); drop --resume to start a new run")
            for key in IDENTITY_KEYS:
                if existing.get(key) != record.get(key):
                    raise RunError(f"{self.path}: --resume of a run made with {_difference(key, existing.get(key), record.get(key))}")
            return
        if existing is not None:
            raise RunError(
                f"{self.path}: already holds a run (recipe {_short(existing.get('recipe'))}, model {existing.get('model')}); "
                "continue it with --resume, or choose another --run-dir"
            )

    def start(self, record: Mapping[str, Any], recipe: Mapping[str, Any], *, resume: bool) -> None:
        """Check the record again (the caller holds :meth:`locked`), then write the run record of a new run."""
        self._check_record(record, resume=resume)
        if resume:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.record_file, dict(record))
        atomic_write_json(self.path / "recipe.json", dict(recipe))

    def discard_if_unstarted(self, created: bool) -> None:
        """After a failure before the first checkpoint, remove what starting the run wrote."""
        if self.checkpoints.exists() and any(self.checkpoints.glob("*.pt")):
            return  # something to resume from: keep it
        if created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in (
            "run.json",
            "recipe.json",
            "provenance.json",
            "transfer.json",
            "groups.json",
            BASELINE_FILE,
            "metrics.jsonl",
            FAILURE_FILE,
        ):
            (self.path / name).unlink(missing_ok=True)

    def record_failure(self, error: BaseException) -> None:
        """Leave ``failed.json`` (what stopped the run) for ``zoo runs``; an interruption is not a failure."""
        if isinstance(error, KeyboardInterrupt) or not (self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))):
            return  # a run without a checkpoint was discarded: there is nothing to list
        self.write_json(FAILURE_FILE, {"error": str(error) or type(error).__name__, "type": type(error).__name__})

    def clear_failure(self) -> None:
        (self.path / FAILURE_FILE).unlink(missing_ok=True)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_json(self.path / name, data)

    def resume_checkpoint(self) -> tuple[dict[str, Any], Path] | None:
        """The newest loadable checkpoint, falling back past corrupt ones (and saying so).

        ``None`` when the run never finished an epoch (killed in its first): it starts over.
        """
        candidates = [self.last(), self.checkpoints / "last.prev.pt"]
        candidates += sorted(self.checkpoints.glob("stage-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        problems = []
        for path in candidates:
            if not path.is_file():
                continue
            try:
                content = torch_load(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if path.name.startswith("stage-") and "optimizer_state_dict" not in content:  # weights only: cannot continue
                continue
            if problems:
                log.warning("%s; resuming from the previous good checkpoint %s instead", "; ".join(problems), path.name)
            return content, path
        if problems:
            raise RunError(f"{self.path}: no loadable checkpoint to resume from ({'; '.join(problems)})")
        return None

    # -- saving ------------------------------------------------------------------------------------

    def drop_last(self) -> None:
        """Remove ``last.pt`` and its fallback (``--keep`` without ``last``, after the run)."""
        for path in (self.last(), self.checkpoints / "last.prev.pt"):
            path.unlink(missing_ok=True)

    def save(self, kind: str, content: Mapping[str, Any], name: str | None = None) -> Path:
        """Save ``last``, ``best`` or a ``stage`` checkpoint (the engine checks the weights are finite first)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if kind == "last":
            target = self.last()
            if target.exists():
                os.replace(target, self.checkpoints / "last.prev.pt")
                fsync_dir(self.checkpoints)
        elif kind == "best":
            target = self.best()
        else:
            target = self.checkpoints / f"{name}.pt"
        remove_stale_temporaries(self.checkpoints, target.name)  # left by a save that was killed
        return save_checkpoint(content, target)

    # -- metrics -----------------------------------------------------------------------------------

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.metrics_file, "a") as handle:
            handle.write(json.dumps(dict(row), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def trim_metrics(self, completed_epochs: int) -> None:
        """Drop rows of epochs that a resumed run will run again."""
        rows = [row for row in self.read_metrics() if row.get("epoch", 0) <= completed_epochs]  # epochs count from 1
        from ..fileio import atomic_write_text

        atomic_write_text(self.metrics_file, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _difference(key: str, before: Any, now: Any) -> str:
    if key == "recipe" and isinstance(before, Mapping) and isinstance(now, Mapping) and before.get("name") == now.get("name"):
        return (
            f"other values of recipe {_short(before)} (different --set overrides?); use the same overrides, "
            "or another --run-dir"
        )
    return (
        f"{key} {_short(before)}, but this command uses {_short(now)}; use the same --recipe/--model/--set, "
        "or another --run-dir"
    )


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return repr(value.get("name", "?"))
    return repr(value)
