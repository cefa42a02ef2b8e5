"""Past runs under a folder, one line each, and cleaning what finished runs no longer need.

A run folder is any folder with a ``run.json`` (``zoo finetune`` writes one; a chain's steps are
run folders too). Read from the files alone: no torch, no model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .errors import ZooError
from .locking import is_held
from .paths import display
from .plot import read_history
from .report import FAILURE_FILE, best_epoch, read_json, read_recipe, run_status

RECORD = "run.json"
SPILL_DIR = "feature-cache"  # a stage's spilled features (engine.setup), left only by a killed run
MAX_DEPTH = 3  # runs/NAME/run.json, and a chain's runs/CHAIN/01-STEP/run.json


@attrs.frozen
class RunSummary:
    path: Path
    model: str
    recipe: str
    data: str
    status: str  # finished, interrupted, failed, running, stopped by the drift guard, not started
    epochs_run: int
    epochs: int
    best: dict[str, Any] | None  # {"metric", "value", "epoch", "stage"}
    size: int  # bytes on disk
    error: str | None = None  # what stopped a failed run

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "path": str(self.path)}


def run_folders(root: Path) -> Iterator[Path]:
    """Run folders under ``root`` (``root`` itself included), in name order."""
    if (root / RECORD).is_file():
        yield root
        return
    found = sorted(path.parent for depth in range(1, MAX_DEPTH + 1) for path in root.glob("/".join(["*"] * depth) + f"/{RECORD}"))
    seen: set[Path] = set()
    for folder in found:
        if not any(parent in seen for parent in folder.parents):
            seen.add(folder)
            yield folder


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def summarise(folder: Path, monitor_for: Callable[[str], tuple[str, str]] | None = None) -> RunSummary:
    record = read_json(folder / RECORD) or {}
    recipe = read_recipe(folder)
    history = read_history(folder) if (folder / "metrics.jsonl").is_file() else []
    status = "running" if is_held(folder) else run_status(folder, recipe, history)
    monitor = monitor_for(record["task"]) if monitor_for is not None and record.get("task") else None
    best = best_epoch(history, monitor)
    failure = read_json(folder / FAILURE_FILE) if status == "failed" else None
    return RunSummary(
        folder, str(record.get("model", "?")), recipe.name, str(record.get("data", "?")), status, len(history),
        sum(stage.epochs for stage in recipe.stages), best, folder_size(folder), (failure or {}).get("error"),
    )  # fmt: skip


def list_runs(root: Path | str, *, monitor_for: Callable[[str], tuple[str, str]] | None = None) -> list[RunSummary]:
    """Every run folder under ``root`` (default ``./runs``), summarised."""
    root = Path(root)
    if not root.is_dir():
        raise ZooError(f"{display(root)}: no such folder; give the folder your runs are in (zoo runs DIR)")
    return [summarise(folder, monitor_for) for folder in run_folders(root)]


def removable(summary: RunSummary) -> list[Path]:
    """What a finished run no longer needs: the fallback ``last.prev.pt``, spilled features, temporaries."""
    if summary.status != "finished":
        return []  # an interrupted or failed run may still be resumed from any of them
    folder = summary.path
    found = [folder / "checkpoints" / "last.prev.pt", folder / SPILL_DIR]
    found += sorted(folder.rglob(".*.tmp"))  # an atomic write's temporary, left by a kill (fileio)
    return [path for path in found if path.exists()]


def clean(summary: RunSummary) -> int:
    """Remove :func:`removable`; return the bytes freed."""
    freed = 0
    for path in removable(summary):
        freed += folder_size(path) if path.is_dir() else path.stat().st_size
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return freed
