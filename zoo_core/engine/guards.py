"""Guards that can end a stage or a run: the best-so-far, early stopping, the drift guard,
non-finite losses.

Whether a value improves on the best is decided in one place,
:meth:`zoo_core.specs.MonitorMode.improves`, for the best checkpoint and for early stopping.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import RunError
from ..specs import DriftAction, DriftGuard, DriftWatch, EarlyStop, MonitorMode

log = logging.getLogger(__name__)


class StopReason(enum.Enum):
    """Why a stage or a run ended before its last epoch."""

    EARLY_STOP = "early stopping"  # ends the stage; the next stage runs
    DRIFT = "drift guard"  # ends the run


@attrs.frozen
class Stop:
    reason: StopReason
    stage: int
    epochs: int  # epochs the stage ran

    @property
    def ends_run(self) -> bool:
        return self.reason is StopReason.DRIFT

    def __str__(self) -> str:
        if self.reason is StopReason.EARLY_STOP:
            return f"early stopping in stage {self.stage} after {self.epochs} epochs"
        return f"drift guard in stage {self.stage}"


@attrs.define
class Best:
    """The best value of the run's monitored metric so far, and the epoch it came from."""

    metric: str
    mode: MonitorMode = attrs.field(converter=MonitorMode)
    value: float | None = None
    epoch: int | None = None

    def update(self, metrics: Mapping[str, float], epoch: int) -> bool:
        """Record ``metrics`` of ``epoch``; ``True`` when they are the new best."""
        value = metrics.get(self.metric)
        if value is None or not self.mode.improves(value, self.value):
            return False
        self.value, self.epoch = value, epoch
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode.value, "value": self.value, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Best:
        return cls(data["metric"], MonitorMode(data["mode"]), data["value"], data["epoch"])


@attrs.define
class EarlyStopping:
    """Counts epochs without improvement of ``spec.monitor``; ``update`` says when to stop."""

    spec: EarlyStop
    best: float | None = None
    bad_epochs: int = 0

    def update(self, metrics: Mapping[str, float]) -> bool:
        if self.spec.monitor not in metrics:
            raise RunError(
                f"early_stop.monitor '{self.spec.monitor}' is not a reported metric (available: {', '.join(sorted(metrics))})"
            )
        value = metrics[self.spec.monitor]
        if self.spec.mode.improves(value, self.best, self.spec.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.spec.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def _loss_key(component: str) -> str:
    return component if component.startswith("val_") else "val_loss" if component == "loss" else f"val_{component}"


def drift_violations(guard: DriftGuard, baseline: Mapping[str, float], current: Mapping[str, float]) -> list[str]:
    """Loss components (``val_loss``, ``val_<component>``) outside ``baseline × (1 ± band)``.

    Only losses are watched: metrics such as accuracy are expected to move.
    """
    names = [_loss_key(c) for c in guard.components] or [key for key in baseline if key.startswith("val_")]
    found = []
    for name in names:
        if name not in baseline or name not in current or not baseline[name]:
            continue
        ratio = current[name] / baseline[name]
        above = ratio > 1 + guard.band
        below = guard.watch is DriftWatch.BOTH and ratio < 1 - guard.band
        if above or below:
            found.append(f"{name} {current[name]:.4g} is {ratio - 1:+.0%} from the pretrained baseline {baseline[name]:.4g}")
    return found


def drift_ratios(baseline: Mapping[str, float] | None, current: Mapping[str, float]) -> dict[str, float]:
    """Each validation loss component over its baseline, as ``drift/<component>`` (``drift/loss``
    for the total): logged every epoch, whether or not the stage's guard watches it."""
    ratios = {}
    for key, start in (baseline or {}).items():
        if key.startswith("val_") and start and key in current:
            ratios[f"drift/{key.removeprefix('val_')}"] = current[key] / start
    return ratios


def check_drift(guard: DriftGuard | None, baseline: Mapping[str, float] | None, current: Mapping[str, float], where: str) -> bool:
    """Warn about drift, or report that the run must stop (``True``) when the guard says so."""
    if guard is None or not baseline:
        return False
    violations = drift_violations(guard, baseline, current)
    if not violations:
        return False
    sign = "±" if guard.watch is DriftWatch.BOTH else "+"  # a guard watching rises ignores falls
    message = f"{where}: drift guard ({sign}{guard.band:.0%}): " + "; ".join(violations)
    if guard.action is DriftAction.STOP:
        log.error("%s; stopping", message)
        return True
    log.warning(message)
    return False


@attrs.define
class NonFiniteGuard:
    """Skips steps with a non-finite loss and gives up after ``limit`` in a row."""

    limit: int = 3
    in_a_row: int = 0
    skipped: int = 0

    def check(self, loss_value: float, where: str) -> bool:
        """``True`` when the step may proceed; ``False`` to skip it. Raises after too many."""
        if math.isfinite(loss_value):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        log.warning("%s: non-finite loss (%s); step skipped (%d in a row)", where, loss_value, self.in_a_row)
        if self.in_a_row >= self.limit:
            raise RunError(
                f"{where}: {self.in_a_row} non-finite losses in a row; stopped. Lower the learning rate or check the data; "
                "the last good checkpoint is kept"
            )
        return False
