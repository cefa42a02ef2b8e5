"""What trains when, at which rate: the trainable groups and base rates of every epoch, and the
learning-rate shape within a stage (linear warmup, then cosine, cosine with warm restarts,
linear or constant).

:class:`TrainingSchedule` is computed once, before training: the unfreeze schedule (a hook)
says which groups train in each epoch, :func:`zoo_core.optim.stage_learning_rates` gives
their base rates, and any group without a rate or unknown to the model fails here. The
factor multiplies every group's base rate, so the ratios between groups are exactly the
recipe's at every step, and a group unfrozen mid-stage joins the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..groups import LayerGroups
from ..optim import stage_learning_rates
from ..specs import Recipe, ScheduleKind, Stage


class TrainingSchedule:
    """Trainable groups and base learning rates per (stage, epoch in stage), computed once."""

    def __init__(self, recipe: Recipe, groups: LayerGroups, unfreeze: Callable[[int, int], frozenset[str]]) -> None:
        self._table: dict[tuple[int, int], tuple[frozenset[str], dict[str, float]]] = {}
        for index, stage in enumerate(recipe.stages):
            where = f"recipe '{recipe.name}' stages[{index}].lr"
            for epoch in range(stage.epochs):
                trainable = frozenset(unfreeze(index, epoch))
                self._table[index, epoch] = (trainable, stage_learning_rates(stage.lr, groups, trainable, where=where))

    def trainable(self, stage_index: int, epoch_in_stage: int) -> frozenset[str]:
        return self._table[stage_index, epoch_in_stage][0]

    def rates(self, stage_index: int, epoch_in_stage: int) -> dict[str, float]:
        return dict(self._table[stage_index, epoch_in_stage][1])


def lr_factor(stage: Stage, step: int, steps_per_epoch: int) -> float:
    """The multiplier at ``step`` (counted from the stage's first step)."""
    total = max(1, stage.epochs * steps_per_epoch)
    warmup = int(round(stage.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if stage.schedule is ScheduleKind.CONSTANT:
        return 1.0
    if stage.schedule is ScheduleKind.COSINE_RESTARTS:
        return _restart_factor(stage, (step - warmup) / steps_per_epoch)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if stage.schedule is ScheduleKind.LINEAR:
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _restart_factor(stage: Stage, epochs: float) -> float:
    """SGDR (``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``'s curve), counted in epochs after warmup.

    Computed from the step rather than by a scheduler object, so resume needs no state.
    """
    cycle, mult = float(stage.restart_epochs or 1.0), float(stage.restart_mult or 1.0)
    if mult == 1.0:
        into = epochs % cycle
    else:
        index = int(math.log(epochs / cycle * (mult - 1) + 1, mult))
        into = epochs - cycle * (mult**index - 1) / (mult - 1)
        cycle = cycle * mult**index
    return 0.5 * (1.0 + math.cos(math.pi * into / cycle))
