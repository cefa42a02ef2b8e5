"""The feature cache: when only the heads train over a deterministic trunk, run the trunk once.

Caching is used only when it provably gives the same results as not caching:

* every trainable parameter lives in the head module (a ZooModel's heads, a detector's head
  or neck and head, else the classifier);
* nothing outside the head is stochastic in training mode (dropout, drop-path) and every
  BatchNorm outside it is frozen (its statistics would otherwise move);
* the task says the stage's input transforms are deterministic (no random crops or flips).

The trunk's output is captured as the head's input with a forward pre-hook, so any
architecture works; the first batch is checked (head(captured) == model(x)) before the cache
is trusted.

Features are kept in memory up to a budget (``--cache-budget``, default a quarter of the free
memory); above it they are written to a memory-mapped file in the run folder, read back by the
page cache as batches need them, and removed when the stage's cache is dropped. Either way they
are the same float32 values, so results do not depend on where they lie.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..anatomy import find_classifier, head_dropout
from ..errors import ZooError
from ..freeze import is_pinned
from ..sizes import available_memory, format_size

log = logging.getLogger(__name__)

STOCHASTIC_NAMES = ("Dropout", "DropPath", "StochasticDepth", "DropBlock")


@attrs.frozen
class HeadSplit:
    module: nn.Module  # holds every trainable parameter
    forward: Callable[..., Any]  # runs the heads on trunk output
    trunk: Callable[[torch.Tensor], Any] | None = None  # the trunk's output for inputs (else model.forward_features)


def _head_split(model: nn.Module, hook: Any) -> HeadSplit | None:
    split = getattr(model, "zoo_head_split", None)
    if callable(split):
        return HeadSplit(*split())  # (module, forward) or (module, forward, trunk)
    try:
        _, classifier = find_classifier(model, hook)
    except ZooError:
        return None
    return HeadSplit(classifier, classifier)


def _is_stochastic(module: nn.Module) -> bool:
    name = type(module).__name__
    if not any(token in name for token in STOCHASTIC_NAMES):
        return False
    probability = next((getattr(module, a) for a in ("p", "drop_prob") if isinstance(getattr(module, a, None), (int, float))), 1.0)
    return probability > 0


def plan_cache(model: nn.Module, deterministic_inputs: bool, hook: Any) -> tuple[HeadSplit | None, str]:
    """The head split to cache under, or ``None`` and the reason caching is off.

    :param hook: the plugin hook relay, asked for the classifier and for dropout no module shows.
    """
    if not deterministic_inputs:
        return None, "the stage's input transforms are random"
    split = _head_split(model, hook)
    if split is None:
        return None, "no head module found"
    head_params = {id(p) for p in split.module.parameters()}
    if any(p.requires_grad and id(p) not in head_params for p in model.parameters()):
        return None, "layers outside the heads train"
    drop_rate = head_dropout(model, hook)  # applied functionally (timm): no module shows it
    if drop_rate > 0:
        return None, f"the model applies dropout ({drop_rate:g}) before its classifier"
    head_modules = {id(m) for m in split.module.modules()}
    for name, module in model.named_modules():
        if id(module) in head_modules:
            continue
        if _is_stochastic(module):
            return None, f"{name} is stochastic ({type(module).__name__})"
        if isinstance(module, _BatchNorm) and not is_pinned(module) and module.training:
            return None, f"{name} updates BatchNorm statistics"
    return split, ""


Features = Any  # a tensor (B, …), or a list of them (a detector's multi-scale maps), batch first


DEFAULT_BUDGET_FRACTION = 0.25  # of the memory free when the cache is built, shared by the processes on a machine


def default_budget(processes_here: int = 1) -> int:
    """Bytes of features kept in memory when ``--cache-budget`` is not given."""
    free = available_memory()
    return int((free or 4 * 10**9) * DEFAULT_BUDGET_FRACTION / max(processes_here, 1))


def _levels(features: Features) -> list[torch.Tensor]:
    return list(features) if isinstance(features, (list, tuple)) else [features]


class FeatureStore:
    """Trunk features of ``count`` items, filled in order: in memory within ``budget`` bytes, else
    in memory-mapped files under ``spill_dir`` (one per feature map; see the module docstring)."""

    def __init__(self, count: int, budget: int, spill_dir: Path) -> None:
        self.count, self.budget, self.spill_dir = count, budget, spill_dir
        self.spilled = False
        self._levels: list[Any] | None = None  # a preallocated tensor (memory) or np.memmap per feature map
        self._is_list = False
        self._filled = 0

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self._levels or ())

    def append(self, features: Features) -> None:
        levels = [level.detach().float().cpu() for level in _levels(features)]
        if self._levels is None:
            self._is_list = isinstance(features, (list, tuple))
            self._allocate(levels)
        rows = slice(self._filled, self._filled + levels[0].shape[0])
        for stored, level in zip(self._levels, levels):
            stored[rows] = level.numpy() if self.spilled else level
        self._filled = rows.stop

    def _allocate(self, first: list[torch.Tensor]) -> None:
        shapes = [(self.count, *level.shape[1:]) for level in first]
        needed = sum(4 * int(np.prod(shape)) for shape in shapes)
        self.spilled = needed > self.budget
        if not self.spilled:
            self._levels = [torch.empty(shape, dtype=torch.float32) for shape in shapes]
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        log.info("feature cache: %s above the budget of %s; writing it to %s", format_size(needed), format_size(self.budget), self.spill_dir)
        self._levels = [
            np.lib.format.open_memmap(self.spill_dir / f"level{index}.npy", mode="w+", dtype=np.float32, shape=shape)
            for index, shape in enumerate(shapes)
        ]

    def result(self) -> Features:
        if self._levels is None:
            return None
        if self._filled != self.count:
            raise RuntimeError(f"feature cache: {self._filled} of {self.count} items stored")
        levels = [torch.from_numpy(level) if self.spilled else level for level in self._levels]
        return levels if self._is_list else levels[0]

    def discard(self) -> None:
        """Remove the spilled files (their memory maps stay valid until dropped, then go)."""
        self._levels = None
        if self.spilled:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


def take(features: Features, index: torch.Tensor) -> Features:
    """The cached features of the items ``index``."""
    if isinstance(features, list):
        return [level[index] for level in features]
    return features[index]


@torch.no_grad()
def compute_features(
    model: nn.Module, split: HeadSplit, batches: Any, to_inputs: Callable[[Any], torch.Tensor], autocast: Any, store: FeatureStore
) -> Features | None:
    """Run the model over ``batches`` capturing the heads' input into ``store``; ``None`` if the check fails.

    A model with ``zoo_head_split`` (a ZooModel, a detector) says where its trunk ends (the
    split's ``trunk``, else ``forward_features``); its heads run on exactly that, so no check is
    needed. Otherwise a pre-hook captures the head's input and the first batch checks
    head(captured) == model(x).
    """
    captured: list[Any] = []
    zoo_model = callable(getattr(model, "zoo_head_split", None))
    handle = None if zoo_model else split.module.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach()))
    checked = zoo_model
    try:
        for batch in batches:
            inputs = to_inputs(batch)
            captured.clear()
            with autocast:
                if zoo_model:
                    captured.append((split.trunk or model.forward_features)(inputs))
                else:
                    full = model(inputs)
            if not checked:
                if not _close(split.forward(captured[0]), full):
                    log.info("feature cache off: the heads' input does not reproduce the model's output")
                    store.discard()
                    return None
                checked = True
            store.append(captured[0])
    finally:
        if handle is not None:
            handle.remove()
    return store.result()


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)


class IndexDataset(torch.utils.data.Dataset):
    """Yields indices; the collate function turns them into batches with cached inputs."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def cached_collate(task: Any, dataset: Any, features: Features) -> Callable[[list[int]], Any]:
    """Batches of the same items with the trunk output as inputs.

    A task with ``cached_batch(dataset, indices, inputs)`` builds them without loading inputs;
    otherwise the items are loaded, collated, and their inputs replaced.
    """
    fast = getattr(task, "cached_batch", None)

    def collate(indices: list[int]) -> Any:
        inputs = take(features, torch.as_tensor(indices))
        if callable(fast):
            return fast(dataset, indices, inputs)
        return task.with_inputs(task.collate([dataset[i] for i in indices]), inputs)

    return collate
