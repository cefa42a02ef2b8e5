"""Learning-rate shape within a stage: linear warmup, then cosine, linear or constant.

The factor multiplies every group's base rate, so the ratios between groups are exactly the
recipe's at every step, and a group unfrozen mid-stage joins the same curve.
"""

from __future__ import annotations

import math

from ..specs import ScheduleKind, Stage


def lr_factor(stage: Stage, step: int, steps_per_epoch: int) -> float:
    """The multiplier at ``step`` (counted from the stage's first step)."""
    total = max(1, stage.epochs * steps_per_epoch)
    warmup = int(round(stage.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if stage.schedule is ScheduleKind.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if stage.schedule is ScheduleKind.LINEAR:
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
