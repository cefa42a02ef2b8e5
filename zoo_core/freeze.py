"""Freezing by layer group, BatchNorm that stays frozen, and an audit that proves it.

Frozen BatchNorm means two things: its affine parameters do not train, and its running
statistics do not move. The second must survive any later ``model.train()`` — a parent's
``.train()`` turns every child back to training mode (pytorch #66073), and a Lightning-style
freeze leaves the statistics updating (#15062). A frozen BN's class is swapped for a
subclass whose ``train()`` always means ``train(False)``; unfreezing swaps it back. State-dict
keys and ``isinstance`` checks are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import RunError
from .groups import LayerGroups, layer_groups
from .specs import BnMode, Recipe, Stage

log = logging.getLogger(__name__)

# --- BatchNorm pinned in eval mode ---------------------------------------------------------------

_PINNED_CLASSES: dict[type, type] = {}


def _train_pinned(self: nn.Module, mode: bool = True) -> nn.Module:
    return self._zoo_unpinned_class.train(self, False)


def _pinned_class(cls: type) -> type:
    if cls not in _PINNED_CLASSES:
        _PINNED_CLASSES[cls] = type(
            cls.__name__,
            (cls,),
            {
                "train": _train_pinned,
                "_zoo_unpinned_class": cls,
                "__module__": cls.__module__,  # pickles as the original class
                "__qualname__": cls.__qualname__,
            },
        )
    return _PINNED_CLASSES[cls]


def is_pinned(module: nn.Module) -> bool:
    return "_zoo_unpinned_class" in type(module).__dict__


def pin_eval(module: nn.Module) -> None:
    """Keep ``module`` in eval mode whatever ``train()`` calls follow."""
    if not is_pinned(module):
        module.__class__ = _pinned_class(type(module))
    module.train(False)


def unpin(module: nn.Module, training: bool | None = None) -> None:
    """Undo :func:`pin_eval`; the module follows ``train()`` again (and ``training`` now, if given)."""
    if is_pinned(module):
        module.__class__ = type(module)._zoo_unpinned_class
    if training is not None:
        module.train(training)


# --- freezing -------------------------------------------------------------------------------------------


@attrs.frozen
class FreezeState:
    """Which groups are frozen and how BatchNorm behaves."""

    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    bn: BnMode

    def to_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen), "trainable": list(self.trainable), "bn": self.bn.value}


def _module_frozen(model: nn.Module, module_name: str, frozen_params: set[str], all_params: set[str]) -> bool:
    """A module counts as frozen when the parameters it (or its nearest owning ancestor) holds are all frozen."""
    prefix = module_name
    while True:
        owned = [p for p in all_params if p.startswith(prefix + ".")] if prefix else list(all_params)
        if owned:
            return all(p in frozen_params for p in owned)
        if not prefix:
            return False
        prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""


def apply_freeze(
    model: nn.Module, groups: LayerGroups, frozen: Iterable[str], bn: BnMode | str = BnMode.FROZEN
) -> FreezeState:
    """Freeze exactly the named groups, train the rest, and set BatchNorm behaviour."""
    bn = BnMode(bn)
    frozen_names = {group.name for group in groups.select(frozen, what="freeze")} if frozen else set()
    params = dict(model.named_parameters())
    frozen_params = {p for group in groups if group.name in frozen_names for p in group.params}
    for name, param in params.items():
        param.requires_grad_(name not in frozen_params)
        if name in frozen_params:
            param.grad = None
    all_params = set(params)
    for module_name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        in_frozen = _module_frozen(model, module_name, frozen_params, all_params)
        if bn is BnMode.EVAL or (bn is BnMode.FROZEN and in_frozen):
            pin_eval(module)
        else:
            unpin(module, training=model.training)
    trainable = tuple(group.name for group in groups if group.name not in frozen_names)
    frozen_ordered = tuple(group.name for group in groups if group.name in frozen_names)
    return FreezeState(frozen_ordered, trainable, bn)


def freeze(
    model: nn.Module,
    level: int | None = None,
    *,
    groups: Sequence[str] | None = None,
    train: Sequence[str] | None = None,
    bn: BnMode | str = BnMode.FROZEN,
    partition: LayerGroups | None = None,
) -> FreezeState:
    """Freeze part of ``model``; give exactly one of ``level``, ``groups`` (to freeze) or ``train``.

    :param level: 0 none, 1 the backbone, 2 everything but the heads (MultiGridDet's levels).
    :param groups: group names or roles to freeze.
    :param train: group names or roles that train; everything else is frozen.
    :param bn: ``"frozen"`` (BN in frozen groups keeps its statistics), ``"train"`` (statistics
        always update) or ``"eval"`` (every BN uses its running statistics).
    """
    given = [level is not None, groups is not None, train is not None]
    if sum(given) != 1:
        raise TypeError("freeze() takes exactly one of level=, groups= or train=")
    all_groups = partition or layer_groups(model)
    if level is not None:
        frozen = [group.name for group in all_groups.frozen_by_level(level)]
    elif groups is not None:
        frozen = [group.name for group in all_groups.select(groups, what="freeze")]
    else:
        keep = {group.name for group in all_groups.select(train or [], what="train")}
        frozen = [group.name for group in all_groups if group.name not in keep]
    return apply_freeze(model, all_groups, frozen, bn)


def freeze_to(model: nn.Module, n: int, *, bn: BnMode | str = BnMode.FROZEN, partition: LayerGroups | None = None) -> FreezeState:
    """Freeze the first ``n`` groups (counted from the input), train the rest (fastai's ``freeze_to``)."""
    all_groups = partition or layer_groups(model)
    if not -len(all_groups) <= n <= len(all_groups):
        raise ValueError(f"freeze_to({n}): the model has {len(all_groups)} groups")
    return apply_freeze(model, all_groups, [group.name for group in all_groups[:n]], bn)


def unfreeze(model: nn.Module, *, partition: LayerGroups | None = None) -> FreezeState:
    """Train everything again; BatchNorm follows ``train()`` again."""
    all_groups = partition or layer_groups(model)
    return apply_freeze(model, all_groups, [], BnMode.TRAIN)


# --- recipes: which groups train when ---------------------------------------------------------------------


def trainable_at_start(stage: Stage, groups: LayerGroups, where: str = "stage") -> list[str]:
    """Groups a stage trains in its first epoch (validates every group it names)."""
    if stage.train is not None:
        for selector in stage.train:
            if not groups.select([selector], what=f"{where}.train"):  # a role this model lacks, e.g. "neck"
                log.info("%s.train names '%s', which this model does not have; it is skipped", where, selector)
        return [group.name for group in groups.select(stage.train, what=f"{where}.train")]
    if stage.freeze is not None:
        frozen = {group.name for group in groups.frozen_by_level(stage.freeze)}
        return [group.name for group in groups if group.name not in frozen]
    return groups.names()


def stage_schedule(recipe: Recipe, groups: LayerGroups) -> Callable[[int, int], frozenset[str]]:
    """The built-in schedule: each stage's ``train``/``freeze``, plus one more group (the frozen
    one nearest the output) every ``unfreeze_every`` epochs, as in ULMFiT's gradual unfreezing."""
    starts = [trainable_at_start(stage, groups, f"recipe '{recipe.name}' stages[{i}]") for i, stage in enumerate(recipe.stages)]

    def schedule(stage_index: int, epoch_in_stage: int) -> frozenset[str]:
        stage = recipe.stages[stage_index]
        trainable = set(starts[stage_index])
        if stage.unfreeze_every:
            waiting = [group.name for group in reversed(groups) if group.name not in trainable]
            trainable.update(waiting[: epoch_in_stage // stage.unfreeze_every])
        return frozenset(trainable)

    return schedule


# --- audit ---------------------------------------------------------------------------------------------------


def fingerprint(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class FreezeAudit:
    """Fingerprints of every frozen tensor (parameters and the buffers of frozen modules).

    Take one after freezing, train, then call :meth:`changed` (or :meth:`check`): any name it
    returns moved although it was frozen.
    """

    def __init__(self, model: nn.Module) -> None:
        self._tensors = dict(self._frozen_tensors(model))
        self._fingerprints = {name: fingerprint(tensor) for name, tensor in self._tensors.items()}

    @staticmethod
    def _frozen_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
        for name, param in model.named_parameters():
            if not param.requires_grad:
                yield name, param
        for module_name, module in model.named_modules():
            own_params = list(module.parameters(recurse=False))
            frozen_module = is_pinned(module) or (own_params and not any(p.requires_grad for p in own_params))
            if frozen_module:
                for buffer_name, buffer in module.named_buffers(recurse=False):
                    yield (f"{module_name}.{buffer_name}" if module_name else buffer_name), buffer

    @property
    def names(self) -> list[str]:
        return list(self._fingerprints)

    def changed(self) -> list[str]:
        return [name for name, tensor in self._tensors.items() if fingerprint(tensor) != self._fingerprints[name]]

    def check(self) -> None:
        moved = self.changed()
        if moved:
            raise RunError(f"frozen tensors changed: {', '.join(moved[:5])}{' …' if len(moved) > 5 else ''}")
