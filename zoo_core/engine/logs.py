"""Where metrics go: the run's metrics.jsonl, TensorBoard when installed, progress bars on terminals."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TensorBoardWriter:
    """Writes scalars when the ``tensorboard`` package is installed; does nothing otherwise."""

    def __init__(self, folder: Path) -> None:
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed; metrics go to metrics.jsonl only")
            return
        self._writer = SummaryWriter(log_dir=str(folder))

    def write(self, row: Mapping[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def progress(iterable: Iterable[Any], *, total: int, description: str, enabled: bool) -> Iterable[Any]:
    """A tqdm bar on an interactive terminal (rank 0 only); the plain iterable otherwise."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


def format_row(row: Mapping[str, Any]) -> str:
    """One line per epoch for the console."""
    parts = [f"stage {row['stage']} ({row['stage_name']}) epoch {row['epoch_in_stage'] + 1}/{row['stage_epochs']}"]
    for key in ("train_loss", "val_loss", "accuracy", "top5", "f1_macro", "map", "map_50", "f1"):
        if key in row and isinstance(row[key], (int, float)):
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row.get('seconds', 0):.1f}s")
    if row.get("cached"):
        parts.append("cached features")
    return "  ".join(parts)
