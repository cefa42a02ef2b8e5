"""Putting the model in a stage's shape: freezing, learning rates, the feature cache, wrapping.

:class:`StageSetup` is the Engine's collaborator for everything that changes when a stage
starts or a group is unfrozen: it freezes the groups that do not train (BatchNorm included),
sets their rates from the :class:`~zoo_core.engine.schedule.TrainingSchedule`, builds the
frozen-trunk feature cache when the inputs are deterministic, and wraps what trains in DDP
and ``torch.compile`` — recompiling after every change of the trainable set. It also owns the
run's data loaders: their workers persist through a stage (and through the run for
validation), and the images they decode may share one bounded cache (``--cache-images``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from ..freeze import apply_freeze
from ..groups import LayerGroups
from ..imagecache import SharedImageCache
from ..sizes import available_memory
from ..specs import Recipe, Stage
from .cache import FeatureStore, HeadSplit, IndexDataset, cached_collate, compute_features, default_budget, plan_cache
from .device import DeviceConfig
from .distributed import DistInfo
from .loading import batches, default_workers, make_loader
from .options import RunOptions
from .strategy import is_sharded
from .task import Task, TaskData

log = logging.getLogger(__name__)

FEATURE_SPILL_DIR = "feature-cache"  # in the run folder, while a stage's features are spilled to disk
AUTO_IMAGE_CACHE = 10**9  # bytes: data sets whose decoded images fit are cached without --cache-images


def auto_cache_budget(images: int, config: Any) -> int:
    """The image cache for ``images`` without ``--cache-images``: room for them all when their decoded
    size (estimated as 4:3 images, the shorter side resized for ``config``) fits within 1 GB, or a
    tenth of free memory if less; else none."""
    free = available_memory()
    limit = min(AUTO_IMAGE_CACHE, free // 10) if free else AUTO_IMAGE_CACHE
    side = config.resize_size
    estimate = images * config.channels * side * (side * 4 // 3)
    return int(estimate * 1.25) if estimate <= limit else 0  # the margin: images wider than 4:3


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
        folder: Path,
    ) -> None:
        self.model, self.groups, self.optimizer = model, groups, optimizer
        self.task, self.data, self.input_config = task, data, input_config
        self.device, self.dist, self.options, self.hook = device, dist, options, hook
        self.spill_dir = folder / FEATURE_SPILL_DIR
        self._remove_spilled()
        self.image_caches = self._image_caches()
        self.val_dataset = self._dataset("val", {})
        self.trainable: frozenset[str] | None = None
        self.rates: dict[str, float] = {}
        self.train_forward: Any = model
        self.cached: Any = None  # cached trunk features: a tensor, or a list of multi-scale maps
        self.val_cached: Any = None
        self._stores: list[FeatureStore] = []
        self.head: HeadRunner | None = None
        self.cache_seconds = 0.0
        self.per_rank_batch = 64
        self._train_loader: tuple[Any, torch.utils.data.DataLoader] | None = None
        self._val_loader: tuple[int, torch.utils.data.DataLoader] | None = None

    def _image_caches(self) -> dict[str, SharedImageCache]:
        """One shared cache per split, ``--cache-images`` bytes between them in proportion to their images.

        Without ``--cache-images``, a data set whose decoded images (estimated from the input
        size) fit within :func:`auto_image_cache` is cached whole, and a larger one not at all:
        small sets skip decoding after the first epoch, memory does not grow with large ones.
        """
        budget = self.options.cache_images
        supported = "image_cache" in inspect.signature(self.task.dataset).parameters
        counts = {"train": len(self.data.train), "val": len(self.data.val)}
        if budget is None:
            budget = auto_cache_budget(sum(counts.values()), self.input_config) if supported else 0
        if not budget:
            return {}
        if not supported:
            raise RunError(f"--cache-images: task '{self.task.name}' keeps no decoded images (its dataset takes no image_cache); leave it out")
        total = max(sum(counts.values()), 1)
        return {split: SharedImageCache(count, budget * count // total) for split, count in counts.items()}

    def _dataset(self, split: str, augment: Any) -> Any:
        cache = self.image_caches.get(split)
        extra = {"image_cache": cache} if cache is not None else {}  # tasks that cache no images keep working
        return self.task.dataset(self.data, split, input_config=self.input_config, augment=augment, **extra)

    def begin(self, stage: Stage, recipe: Recipe) -> None:
        """A new stage: its data, batch size and weight decay; freezing is applied again."""
        self.per_rank_batch = (stage.batch_size or recipe.batch_size) // self.dist.world_size  # divisibility: api.plan_run
        self.train_dataset = self._dataset("train", stage.augment)
        self._train_loader = None  # the previous stage's workers shut down with it
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
        if not self.options.use_cache:
            split, reason = None, "disabled"
        elif is_sharded(self.model):
            split, reason = None, "--strategy fsdp shards the trunk"
        else:
            split, reason = plan_cache(self.model, self.deterministic, self.hook)
        started = time.perf_counter()
        self.discard_features()
        budget = self.options.cache_budget if self.options.cache_budget is not None else default_budget(self.dist.local_world_size)
        self.cached = self._features(split, self.train_dataset, "train", budget) if split is not None else None
        # the trunk is frozen and deterministic, so validation inputs can skip it too
        left = max(budget - sum(store.nbytes for store in self._stores if not store.spilled), 0)
        self.val_cached = self._features(split, self.val_dataset, "val", left) if self.cached is not None else None
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
        if self.dist.enabled and not is_sharded(self.model):  # a sharded model synchronises its own gradients
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.device.index] if self.device.device.type == "cuda" else None
            # a multi-head model may train on one head's loss only; DDP must not wait for the others
            unused = len(getattr(self.model, "heads", ())) > 1
            module = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)
        if self.options.compile_backend:
            torch._dynamo.reset()  # graphs captured for the old trainable set must not be reused
            module = torch.compile(module, backend=self.options.compile_backend)
        return module

    def _features(self, split: HeadSplit, dataset: Any, name: str, budget: int) -> Any:
        loader = self.loader(dataset, batch_size=max(self.per_rank_batch, 64), persistent=False)
        to_inputs: Callable[[Any], torch.Tensor] = lambda batch: self.task.inputs(  # noqa: E731
            self.task.to_device(batch, self.device.device, self.device.channels_last)
        )
        self.model.train()
        store = FeatureStore(len(dataset), budget, self.spill_dir / f"{name}-rank{self.dist.rank}")
        self._stores.append(store)
        return compute_features(self.model, split, batches(loader), to_inputs, self.device.autocast(), store)

    def discard_features(self) -> None:
        """Drop the cached features, and their files when they spilled to disk."""
        self.cached = self.val_cached = None
        for store in self._stores:
            store.discard()
        self._stores = []

    # -- loaders ----------------------------------------------------------------------------------

    def workers(self, items: int) -> int:
        """``--workers``, else the default for this many items per process."""
        if self.options.workers is not None:
            return self.options.workers
        return default_workers(self.dist.world_size, items // self.dist.world_size)

    def loader(self, dataset: Any, *, batch_size: int, sampler: Any = None, seed: int = 0, persistent: bool = True) -> Any:
        return make_loader(
            dataset, collate=self.task.collate, batch_size=batch_size, sampler=sampler or torch.utils.data.SequentialSampler(dataset),
            seed=seed, workers=self.workers(len(dataset)), pin_memory=self.device.pin_memory, persistent=persistent,
        )  # fmt: skip

    def train_loader(self, epoch: int, epoch_seed: int, seed: int) -> Any:
        """This epoch's training batches: cached features (no workers needed), else the stage's loader."""
        from torch.utils.data.distributed import DistributedSampler

        cached = self.cached is not None
        key = (id(self.train_dataset), id(self.cached))  # a loader serves one dataset, or one set of cached features
        if self._train_loader is None or self._train_loader[0] != key:
            dataset = IndexDataset(len(self.train_dataset)) if cached else self.train_dataset
            sampler = DistributedSampler(
                dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=seed, drop_last=False
            )
            if cached:
                loader = make_loader(
                    dataset, collate=cached_collate(self.task, self.train_dataset, self.cached), batch_size=self.per_rank_batch,
                    sampler=sampler, seed=seed, workers=0, pin_memory=self.device.pin_memory,
                )  # fmt: skip
            else:
                loader = self.loader(dataset, batch_size=self.per_rank_batch, sampler=sampler, seed=seed)
            self._train_loader = (key, loader)
        loader = self._train_loader[1]
        loader.sampler.set_epoch(epoch, epoch_seed)
        return loader

    def val_loader(self, *, on_features: bool) -> Any:
        """Validation batches, of cached features or of images; the images' workers persist through the run."""
        if on_features:
            dataset = IndexDataset(len(self.val_dataset))
            return make_loader(
                dataset, collate=cached_collate(self.task, self.val_dataset, self.val_cached), batch_size=max(self.per_rank_batch, 64),
                sampler=torch.utils.data.SequentialSampler(dataset), seed=0, workers=0, pin_memory=self.device.pin_memory,
            )  # fmt: skip
        size = max(self.per_rank_batch, 64)
        if self._val_loader is None or self._val_loader[0] != size:
            self._val_loader = (size, self.loader(self.val_dataset, batch_size=size))
        return self._val_loader[1]

    def close(self) -> None:
        """End of the run: workers stop, spilled features are removed."""
        self._train_loader = self._val_loader = None
        self.discard_features()
        self._remove_spilled()
        with contextlib.suppress(OSError):  # another process's features may still be there
            self.spill_dir.rmdir()

    def _remove_spilled(self) -> None:
        """This process's spilled features, and any a killed run left behind."""
        for stale in self.spill_dir.glob(f"*-rank{self.dist.rank}"):
            shutil.rmtree(stale, ignore_errors=True)
