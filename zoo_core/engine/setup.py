"""Putting the model in a stage's shape: freezing, learning rates, the feature cache, wrapping.

:class:`StageSetup` is the Engine's collaborator for everything that changes when a stage
starts or a group is unfrozen: it freezes the groups that do not train (BatchNorm included),
sets their rates from the :class:`~zoo_core.engine.schedule.TrainingSchedule`, builds the
frozen-trunk feature cache when the inputs are deterministic, and wraps what trains in DDP
and ``torch.compile`` — recompiling after every change of the trainable set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..freeze import apply_freeze
from ..groups import LayerGroups
from ..specs import Recipe, Stage
from .cache import HeadSplit, compute_features, plan_cache
from .device import DeviceConfig
from .distributed import DistInfo
from .options import RunOptions
from .task import Task, TaskData

log = logging.getLogger(__name__)


class HeadRunner(nn.Module):
    """Runs only the heads on cached trunk features (a module, so DDP and compile can wrap it)."""

    def __init__(self, split: HeadSplit) -> None:
        super().__init__()
        self.head = split.module
        self._forward = split.forward

    def forward(self, features: Any, *rest: Any) -> Any:
        return self._forward(features, *rest)  # a task may pass more than the features (a detector: targets, input size)


class StageSetup:
    """The model's shape for the current stage and trainable set; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        groups: LayerGroups,
        optimizer: torch.optim.Optimizer,
        *,
        task: Task,
        data: TaskData,
        input_config: Any,
        device: DeviceConfig,
        dist: DistInfo,
        options: RunOptions,
        hook: Any,
    ) -> None:
        self.model, self.groups, self.optimizer = model, groups, optimizer
        self.task, self.data, self.input_config = task, data, input_config
        self.device, self.dist, self.options, self.hook = device, dist, options, hook
        self.val_dataset = task.dataset(data, "val", input_config=input_config, augment={})
        self.trainable: frozenset[str] | None = None
        self.rates: dict[str, float] = {}
        self.train_forward: Any = model
        self.cached: Any = None  # cached trunk features: a tensor, or a list of multi-scale maps
        self.val_cached: Any = None
        self.head: HeadRunner | None = None
        self.cache_seconds = 0.0
        self.per_rank_batch = 64

    def begin(self, stage: Stage, recipe: Recipe) -> None:
        """A new stage: its data, batch size and weight decay; freezing is applied again."""
        self.per_rank_batch = (stage.batch_size or recipe.batch_size) // self.dist.world_size  # divisibility: api.plan_run
        self.train_dataset = self.task.dataset(self.data, "train", input_config=self.input_config, augment=stage.augment)
        self.deterministic = self.task.deterministic(stage.augment)
        weight_decay = stage.weight_decay if stage.weight_decay is not None else recipe.weight_decay
        for param_group in self.optimizer.param_groups:
            if param_group["zoo_decay"]:
                param_group["weight_decay"] = weight_decay
        self.trainable = None

    def apply(self, stage_index: int, stage: Stage, trainable: frozenset[str], rates: dict[str, float]) -> None:
        """Freeze what does not train, set the rates, (re)build the cache and the wrapped module."""
        if trainable == self.trainable:
            return
        apply_freeze(self.model, self.groups, [group.name for group in self.groups if group.name not in trainable], stage.bn)
        self.rates, self.trainable = rates, trainable
        split, reason = plan_cache(self.model, self.deterministic, self.hook) if self.options.use_cache else (None, "disabled")
        started = time.perf_counter()
        self.cached = self._features(split, self.train_dataset) if split is not None else None
        # the trunk is frozen and deterministic, so validation inputs can skip it too
        self.val_cached = self._features(split, self.val_dataset) if self.cached is not None else None
        self.cache_seconds = time.perf_counter() - started if self.cached is not None else 0.0
        self.head = HeadRunner(split) if self.cached is not None else None
        self.train_forward = self._wrapped(self.head if self.head is not None else self.model)
        if self.dist.is_main:
            trained = [group.name for group in self.groups if group.name in trainable]
            how = " over cached trunk features" if self.cached is not None else (f" (feature cache off: {reason})" if reason != "disabled" else "")
            log.info("stage %d: training %s%s", stage_index, ", ".join(trained) or "nothing", how)

    def take_cache_seconds(self) -> float:
        """Seconds spent building the cache, reported once, on the epoch that built it."""
        seconds, self.cache_seconds = self.cache_seconds, 0.0
        return seconds

    def _wrapped(self, module: nn.Module) -> Any:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.device.index] if self.device.device.type == "cuda" else None
            # a multi-head model may train on one head's loss only; DDP must not wait for the others
            unused = len(getattr(self.model, "heads", ())) > 1
            module = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)
        if self.options.compile_backend:
            torch._dynamo.reset()  # graphs captured for the old trainable set must not be reused
            module = torch.compile(module, backend=self.options.compile_backend)
        return module

    def _features(self, split: HeadSplit, dataset: Any) -> Any:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=max(self.per_rank_batch, 64),
            shuffle=False,
            collate_fn=self.task.collate,
            num_workers=self.options.workers,
            pin_memory=self.device.pin_memory,
        )
        to_inputs: Callable[[Any], torch.Tensor] = lambda batch: self.task.inputs(  # noqa: E731
            self.task.to_device(batch, self.device.device, self.device.channels_last)
        )
        self.model.train()
        return compute_features(self.model, split, loader, to_inputs, self.device.autocast())
