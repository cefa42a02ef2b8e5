"""A recipe as a run uses it: ``--set`` overrides applied and validated again, augment keys
checked against the task, the batch size checked against the number of processes, and the
warnings of MultiGridDet's fine-tuning guide (seed 002) about what untrains pretrained weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tomllib

from ..catalog import Where, recipe_from_mapping
from ..errors import RecipeError, did_you_mean
from ..specs import FreezeLevel, Recipe, Stage


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string


def _set_path(node: Any, parts: list[str], value: Any, text: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        indices = range(len(node)) if head == "*" else [int(head)] if head.isdigit() else None
        if indices is None or any(not 0 <= i < len(node) for i in indices):
            raise RecipeError(f"--set {text}: '{head}' is not an index of a list with {len(node)} entries (use 0-{len(node) - 1} or *)")
        for index in indices:
            if rest:
                _set_path(node[index], rest, value, text)
            else:
                node[index] = value
        return
    if not isinstance(node, dict):
        raise RecipeError(f"--set {text}: cannot set '{head}' inside a {type(node).__name__}")
    if rest:
        node.setdefault(head, {})
        _set_path(node[head], rest, value, text)
    else:
        node[head] = value


def apply_overrides(recipe: Recipe, overrides: Sequence[str]) -> Recipe:
    """Apply ``KEY=VALUE`` overrides (``stages.0.epochs=1``, ``stages.*.lr=1e-4``) and re-validate."""
    if not overrides:
        return recipe
    data = recipe.to_dict()
    data.pop("name")
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.0.epochs=1")
        _set_path(data, key.split("."), _parse_value(raw), text)
    return recipe_from_mapping(recipe.name, data, Where(f"--set (recipe '{recipe.name}')", ""))


def check_augment_keys(recipe: Recipe, task: Any) -> None:
    for index, stage in enumerate(recipe.stages):
        for key in stage.augment:
            if key not in task.augment_keys:
                raise RecipeError(
                    f"recipe '{recipe.name}' stages[{index}].augment.{key}: the {task.name} task has no such "
                    f"augmentation{did_you_mean(key, task.augment_keys)} (it knows {', '.join(sorted(task.augment_keys))})"
                )


def check_batch_split(recipe: Recipe, world_size: int) -> None:
    for index, stage in enumerate(recipe.stages):
        batch = stage.batch_size or recipe.batch_size
        if batch % world_size:
            raise RecipeError(
                f"recipe '{recipe.name}' stages[{index}]: batch size {batch} does not split over {world_size} processes; "
                f"use a multiple of {world_size} (--set batch_size=...)"
            )


def _label(index: int, stage: Stage) -> str:
    return f"stages[{index}]" + (f" ({stage.name})" if stage.name else "")


def _freezes(stage: Stage) -> bool:
    return (stage.freeze is not None and stage.freeze is not FreezeLevel.NONE) or stage.train is not None


def recipe_warnings(recipe: Recipe, *, pretrained: bool | None = None) -> list[str]:
    """What the guide warns against, one line each: ``zoo recipes NAME --check`` and ``finetune`` show them.

    ``pretrained``: whether the run starts from trained weights (``None``: not known, as in
    ``zoo recipes --check``, which warns as if it did).
    """
    found = []
    for index, stage in enumerate(recipe.stages):
        if recipe.max_lr is not None and stage.lr.highest() > recipe.max_lr:
            found.append(
                f"{_label(index, stage)}: lr {stage.lr.highest():g} exceeds the recipe's max_lr {recipe.max_lr:g}; "
                "higher rates untrain pretrained weights (lower it, or raise max_lr if the weights are new)"
            )
        if index and stage.freeze is FreezeLevel.NONE and recipe.stages[index - 1].freeze is FreezeLevel.ALL_BUT_HEADS:
            found.append(
                f"{_label(index - 1, recipe.stages[index - 1])} -> {_label(index, stage)}: freeze level jumps from 2 straight to 0; "
                "unfreezing backbone and neck at once destabilises them: put a freeze = 1 stage between"
            )
        if "grid" in stage.loss_norm and (_freezes(stage) or pretrained is not False):
            why = (
                "groups are frozen"
                if _freezes(stage)
                else "the weights are pretrained"
                if pretrained
                else "fine-tuning pretrained weights"
            )
            found.append(
                f"{_label(index, stage)}: loss_norm grid while {why}; a per-cell mean changes the loss scale too much for "
                'weights trained under another normalisation: use ["batch"] (or ["batch", "positives"])'
            )
    return found
