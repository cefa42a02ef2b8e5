"""The Engine: runs a recipe's stages in order and owns the training step.

It sequences; the collaborators decide: the unfreeze schedule (a hook) says which groups
train, :mod:`zoo_core.freeze` freezes them, :mod:`zoo_core.optim` sets their rates,
:mod:`.schedule` shapes the rates, :mod:`.cache` decides whether trunk features can be
reused, :mod:`.guards` stop stages and runs, :mod:`.rundir` saves. Each epoch starts from a
seed derived from the run seed and the epoch number, so a resumed run replays exactly.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from ..checkpoint import check_finite
from ..freeze import apply_freeze
from ..groups import LayerGroups
from ..optim import apply_learning_rates, build_optimizer, current_rates, stage_learning_rates
from ..specs import Recipe, Stage
from . import distributed
from .cache import HeadSplit, IndexDataset, cached_collate, compute_features, plan_cache
from .device import DeviceConfig
from .ema import ModelEma
from .evaluation import evaluate_model
from .guards import EarlyStopping, NonFiniteGuard, check_drift
from .logs import TensorBoardWriter, format_row, progress
from .rundir import RunFolder
from .schedule import lr_factor

log = logging.getLogger(__name__)


@attrs.frozen
class RunInfo:
    """What hooks learn about the run."""

    run_dir: Path
    recipe: Recipe
    model: str
    task: str
    rank: int
    world_size: int


@attrs.define
class Position:
    """Where the run stands: the next stage and epoch to run, and what is done."""

    stage: int = 0
    epoch_in_stage: int = 0
    epoch: int = 0  # epochs completed over all stages
    step: int = 0  # optimizer steps taken


@attrs.frozen
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: str | None  # why the run ended before its last epoch, if it did

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best": self.best,
            "final": self.final,
            "epochs": len(self.history),
            "stopped": self.stopped,
        }


class HeadRunner(nn.Module):
    """Runs only the heads on cached trunk features (a module, so DDP and compile can wrap it)."""

    def __init__(self, split: HeadSplit) -> None:
        super().__init__()
        self.head = split.module
        self._forward = split.forward

    def forward(self, features: torch.Tensor) -> Any:
        return self._forward(features)


def _clear_grads(params: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` for the parameters that can have gradients.

    Frozen parameters never get one, and walking every param group costs milliseconds per step.
    """
    for param in params:
        param.grad = None


def rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Engine:
    """Runs one recipe on one model; see the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        groups: LayerGroups,
        recipe: Recipe,
        task: Any,
        data: Any,
        input_config: Mapping[str, Any],
        device: DeviceConfig,
        dist: distributed.DistInfo,
        folder: RunFolder,
        info: RunInfo,
        hook: Any,
        schedule: Callable[[int, int], frozenset[str]],
        seed: int,
        provenance: Mapping[str, Any],
        workers: int = 0,
        compile_backend: str | None = None,
        use_cache: bool = True,
        nonfinite_limit: int = 3,
    ) -> None:
        self.model = model.to(device.device)
        if device.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.groups = groups
        self.recipe = recipe
        self.task = task
        self.data = data
        self.num_classes = len(data.class_names)
        self.input_config = dict(input_config)
        self.device = device
        self.dist = dist
        self.folder = folder
        self.info = info
        self.hook = hook
        self.schedule = schedule
        self.seed = seed
        self.provenance = dict(provenance)
        self.workers = workers
        self.compile_backend = compile_backend
        self.use_cache = use_cache
        self.optimizer = build_optimizer(
            self.model, groups, kind=recipe.optimizer, weight_decay=recipe.weight_decay, momentum=recipe.momentum
        )
        self.scaler = device.scaler()
        self.ema: ModelEma | None = None
        self.position = Position()
        self.best: dict[str, Any] = {"metric": task.monitor[0], "mode": task.monitor[1], "value": None, "epoch": None}
        self.baseline: dict[str, float] | None = None
        self.nonfinite = NonFiniteGuard(nonfinite_limit)
        self.early_stop_state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._trainable: frozenset[str] | None = None
        self._rates: dict[str, float] = {}
        self._train_forward: Any = self.model
        self._cached: torch.Tensor | None = None
        self._val_cached: torch.Tensor | None = None
        self._head: HeadRunner | None = None
        self._cache_seconds = 0.0
        self._tensorboard = TensorBoardWriter(folder.path / "tensorboard") if dist.is_main else None
        self.val_dataset = task.dataset(data, "val", input_config=self.input_config, augment={})

    # -- the run --------------------------------------------------------------------------------

    def run(self, resume: Mapping[str, Any] | None = None) -> RunResult:
        if resume is not None:
            self._restore(resume)
        elif any(stage.drift_guard for stage in self.recipe.stages):
            self.baseline = self._validate()  # the pretrained loss the drift guard compares against
        stopped = None
        for stage_index in range(self.position.stage, len(self.recipe.stages)):
            stage = self.recipe.stages[stage_index]
            stopped = self._run_stage(stage_index, stage)
            if stopped and stopped.startswith("drift"):
                break
        if self._tensorboard is not None:
            self._tensorboard.close()
        best_path = self.folder.best() if self.folder.best().exists() else None
        last_path = self.folder.last() if self.folder.last().exists() else None
        return RunResult(self.folder.path, best_path, last_path, dict(self.best), self.history, stopped)

    def _run_stage(self, stage_index: int, stage: Stage) -> str | None:
        first_epoch = self.position.epoch_in_stage if stage_index == self.position.stage else 0
        self.hook.zoo_on_stage_start(run=self.info, stage_index=stage_index, stage=stage)
        self._begin_stage(stage)
        stopper = EarlyStopping(stage.early_stop) if stage.early_stop else None
        if stopper is not None and self.early_stop_state and first_epoch > 0:
            stopper.load_state_dict(self.early_stop_state)
        stopped = None
        row: dict[str, Any] = {}
        for epoch_in_stage in range(first_epoch, stage.epochs):
            self._set_trainable(stage_index, stage, self.schedule(stage_index, epoch_in_stage))
            seed_everything(self._epoch_seed(self.position.epoch))
            started = time.perf_counter()
            train_stats = self._train_epoch(stage_index, stage, epoch_in_stage)
            train_stats["train_seconds"] = round(time.perf_counter() - started, 4)
            val = self._validate(stage)
            row = self._row(stage_index, stage, epoch_in_stage, train_stats, val, time.perf_counter() - started)
            improved = self._track_best(val)
            stop_stage = stopper.update(val) if stopper is not None else False
            drift_stop = check_drift(stage.drift_guard, self.baseline, val, f"stage {stage_index} epoch {epoch_in_stage + 1}")
            last_epoch = stop_stage or epoch_in_stage + 1 == stage.epochs
            self.early_stop_state = stopper.state_dict() if stopper is not None else None
            self.position = Position(
                stage=stage_index + 1 if last_epoch else stage_index,
                epoch_in_stage=0 if last_epoch else epoch_in_stage + 1,
                epoch=self.position.epoch + 1,
                step=self.position.step,
            )
            self._save_epoch(row, improved, finished_stage=stage_index if (last_epoch or drift_stop) else None)
            self.hook.zoo_on_epoch_end(run=self.info, epoch=row["epoch"], metrics=row)
            if drift_stop:
                stopped = f"drift guard in stage {stage_index}"
                break
            if stop_stage:
                stopped = f"early stopping in stage {stage_index} after {epoch_in_stage + 1} epochs"
                log.info("stage %d (%s): %s", stage_index, stage.name, stopped)
                break
        self.hook.zoo_on_stage_end(run=self.info, stage_index=stage_index, stage=stage, metrics=row)
        return stopped

    def _epoch_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + epoch) % 2**31

    # -- stage set-up ------------------------------------------------------------------------------

    def _begin_stage(self, stage: Stage) -> None:
        world = self.dist.world_size
        self.per_rank_batch = (stage.batch_size or self.recipe.batch_size) // world  # divisibility: api.plan_run
        self.train_dataset = self.task.dataset(self.data, "train", input_config=self.input_config, augment=stage.augment)
        self.deterministic = self.task.deterministic(stage.augment)
        if stage.ema and self.ema is None:
            self.ema = ModelEma(self.model, stage.ema)
        elif stage.ema and self.ema is not None:
            self.ema.decay = stage.ema
        weight_decay = stage.weight_decay if stage.weight_decay is not None else self.recipe.weight_decay
        for param_group in self.optimizer.param_groups:
            if param_group["zoo_decay"]:
                param_group["weight_decay"] = weight_decay
        self._trainable = None  # a new stage always re-applies freezing, rates and the train module

    def _set_trainable(self, stage_index: int, stage: Stage, trainable: frozenset[str]) -> None:
        if trainable == self._trainable:
            return
        frozen = [group.name for group in self.groups if group.name not in trainable]
        apply_freeze(self.model, self.groups, frozen, stage.bn)
        where = f"recipe '{self.recipe.name}' stages[{stage_index}].lr"
        self._rates = stage_learning_rates(stage.lr, self.groups, trainable, where=where)
        self._trainable = trainable
        split, reason = plan_cache(self.model, self.deterministic) if self.use_cache else (None, "disabled")
        started = time.perf_counter()
        self._cached = self._build_cache(split, self.train_dataset) if split is not None else None
        # the trunk is frozen and deterministic, so validation inputs can skip it too
        self._val_cached = self._build_cache(split, self.val_dataset) if self._cached is not None else None
        self._cache_seconds = time.perf_counter() - started if self._cached is not None else 0.0
        self._head = HeadRunner(split) if self._cached is not None else None
        module: nn.Module = self._head if self._head is not None else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.device.index] if self.device.device.type == "cuda" else None
            # a multi-head model may train on one head's loss only; DDP must not wait for the others
            unused = len(getattr(self.model, "heads", ())) > 1
            module = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)
        if self.compile_backend:
            torch._dynamo.reset()  # graphs captured for the old trainable set must not be reused
            module = torch.compile(module, backend=self.compile_backend)
        self._train_forward = module
        trained = [group.name for group in self.groups if group.name in trainable]
        if not self.dist.is_main:
            return
        log.info(
            "stage %d: training %s%s",
            stage_index,
            ", ".join(trained) or "nothing",
            " over cached trunk features" if self._cached is not None else (f" (feature cache off: {reason})" if reason != "disabled" else ""),
        )

    def _build_cache(self, split: HeadSplit, dataset: Any) -> torch.Tensor | None:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=max(self.per_rank_batch, 64),
            shuffle=False,
            collate_fn=self.task.collate,
            num_workers=self.workers,
            pin_memory=self.device.pin_memory,
        )

        def to_inputs(batch: Any) -> torch.Tensor:
            return self.task.inputs(self.task.to_device(batch, self.device.device, self.device.channels_last))

        self.model.train()
        return compute_features(self.model, split, loader, to_inputs, self.device.autocast())

    # -- one epoch ----------------------------------------------------------------------------------

    def _loader(self) -> torch.utils.data.DataLoader:
        from torch.utils.data.distributed import DistributedSampler

        cached = self._cached is not None
        dataset = IndexDataset(len(self.train_dataset)) if cached else self.train_dataset
        collate = cached_collate(self.task, self.train_dataset, self._cached) if cached else self.task.collate
        sampler = DistributedSampler(
            dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.seed, drop_last=False
        )
        sampler.set_epoch(self.position.epoch)
        generator = torch.Generator().manual_seed(self._epoch_seed(self.position.epoch))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.per_rank_batch,
            sampler=sampler,
            collate_fn=collate,
            num_workers=0 if cached else self.workers,
            pin_memory=self.device.pin_memory,
            generator=generator,
        )

    def _all_finite(self, value: float) -> float:
        """The loss value, made non-finite on every rank if it is on any (so all skip together)."""
        if not self.dist.enabled:
            return value
        flag = torch.tensor([0.0 if np.isfinite(value) else 1.0], device=self.device.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return float("nan") if flag.item() else value

    def _train_epoch(self, stage_index: int, stage: Stage, epoch_in_stage: int) -> dict[str, float]:
        loader = self._loader()
        steps = len(loader)
        augment_generator = torch.Generator().manual_seed(self._epoch_seed(self.position.epoch) + 1)
        self._train_forward.train()
        self.model.train()
        totals: dict[str, float] = {}
        count = 0
        where = f"stage {stage_index} epoch {epoch_in_stage + 1}"
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        batches = progress(loader, total=steps, description=f"stage {stage_index} ({stage.name}) {epoch_in_stage + 1}/{stage.epochs}", enabled=self.dist.is_main)
        for index, batch in enumerate(batches):
            apply_learning_rates(self.optimizer, self._rates, lr_factor(stage, epoch_in_stage * steps + index, steps))
            batch = self.task.to_device(batch, self.device.device, self.device.channels_last and self._cached is None)
            if self._cached is None:
                batch = self.task.augment_batch(batch, stage.augment, augment_generator)
            with self.device.autocast():
                outputs = self.task.forward(self._train_forward, batch)
                losses = self.task.loss(outputs, batch, loss_scales=stage.loss_scales, label_smoothing=self.recipe.label_smoothing)
            loss = losses["loss"]
            if not self.nonfinite.check(self._all_finite(float(loss.detach())), where):
                _clear_grads(trainable)
                continue
            self.scaler.scale(loss).backward()
            if stage.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            _clear_grads(trainable)
            if self.ema is not None and stage.ema:
                self.ema.update(self.model)
            self.position.step += 1
            size = self.task.batch_size(batch)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) * size
            count += size
        stats = {("train_loss" if k == "loss" else f"train_{k}"): v / max(count, 1) for k, v in totals.items()}
        stats["train_steps"] = steps
        return stats

    # -- validation, records, checkpoints ---------------------------------------------------------

    def _eval_model(self, stage: Stage | None) -> nn.Module:
        return self.ema.module if (self.ema is not None and stage is not None and stage.ema) else self.model

    def _validate(self, stage: Stage | None = None) -> dict[str, float]:
        result = None
        if self.dist.is_main:
            model, dataset, collate = self._eval_model(stage), self.val_dataset, None
            if self._val_cached is not None and model is self.model:
                model, dataset = self._head, IndexDataset(len(self.val_dataset))
                collate = cached_collate(self.task, self.val_dataset, self._val_cached)
            result = evaluate_model(
                model,
                self.task,
                dataset,
                num_classes=self.num_classes,
                batch_size=max(getattr(self, "per_rank_batch", 64), 64),
                device=self.device,
                loss_scales=stage.loss_scales if stage else None,
                collate=collate,
            )
        return distributed.broadcast(self.dist, result)

    def _row(self, stage_index: int, stage: Stage, epoch_in_stage: int, train: Mapping[str, float], val: Mapping[str, float], seconds: float) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.position.epoch,
            "stage": stage_index,
            "stage_name": stage.name,
            "epoch_in_stage": epoch_in_stage,
            "stage_epochs": stage.epochs,
            "step": self.position.step,
            **train,
            **val,
            "trainable": [group.name for group in self.groups if group.name in (self._trainable or ())],
            "cached": self._cached is not None,
            "cache_seconds": round(self._cache_seconds, 4),
            "skipped_steps": self.nonfinite.skipped,
            "seconds": round(seconds, 4),
        }
        self._cache_seconds = 0.0  # reported once, on the epoch that built the cache
        row.update({f"lr/{group}": rate for group, rate in self._rates.items()})
        row.update({f"lr_now/{group}": rate for group, rate in current_rates(self.optimizer).items()})
        self.history.append(row)
        if self.dist.is_main:
            log.info(format_row(row))
        return row

    def _track_best(self, val: Mapping[str, float]) -> bool:
        metric, mode = self.best["metric"], self.best["mode"]
        value = val.get(metric)
        if value is None:
            return False
        if self.best["value"] is None or (value < self.best["value"] if mode == "min" else value > self.best["value"]):
            self.best.update(value=value, epoch=self.position.epoch)
            return True
        return False

    def _checkpoint(self, metrics: Mapping[str, Any], weights: nn.Module | None = None, *, full: bool = True) -> dict[str, Any]:
        model = weights or self.model
        content: dict[str, Any] = {
            "model_state_dict": model.state_dict(),
            "epoch": self.position.epoch,
            "stage": self.position.stage,
            "epoch_in_stage": self.position.epoch_in_stage,
            "step": self.position.step,
            "val_loss": metrics.get("val_loss"),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool, list))},
            "recipe": self.recipe.to_dict(),
            "frozen_layers": [name for name, param in self.model.named_parameters() if not param.requires_grad],
            "provenance": {**self.provenance, "weights": "ema" if weights is not None and weights is not self.model else "model"},
        }
        if full:
            content.update(
                optimizer_state_dict=self.optimizer.state_dict(),
                scheduler_state_dict={"stage": self.position.stage, "epoch_in_stage": self.position.epoch_in_stage, "step": self.position.step},
                scaler_state_dict=self.scaler.state_dict(),
                ema_state_dict=self.ema.state_dict() if self.ema is not None else None,
                rng_states=rng_states(),
                sampler_epoch=self.position.epoch,
                engine_state={
                    "best": dict(self.best),
                    "baseline": self.baseline,
                    "early_stop": self.early_stop_state,
                    "nonfinite_skipped": self.nonfinite.skipped,
                    "history": self.history,
                },
            )
        return content

    def _save_epoch(self, row: Mapping[str, Any], improved: bool, *, finished_stage: int | None) -> None:
        """Write the epoch's metrics and checkpoints: the stage's and ``best.pt`` first, ``last.pt`` last.

        ``last.pt`` is what ``--resume`` continues from. Written last, a kill between any two
        writes resumes from the previous epoch, replays this one and writes every file again, so
        no ``best.pt`` or stage checkpoint is ever lost.
        """
        # non-finite weights are never saved: checked once, before any of this epoch's files, and on
        # every rank (their weights are the same) so that all stop together
        check_finite(self.model.state_dict(), f"{self.folder.path} (weights after epoch {row['epoch'] + 1})")
        if self.dist.is_main:
            self.folder.append_metrics(row)
            if self._tensorboard is not None:
                self._tensorboard.write(row, row["epoch"])
            content = self._checkpoint(row)
            if finished_stage is not None:
                name = f"stage-{finished_stage}-{self.recipe.stages[finished_stage].name or 'stage'}"
                path = self.folder.save("stage", content, name)
                self.hook.zoo_on_checkpoint_saved(run=self.info, path=str(path), kind="stage")
            if improved:
                stage = self.recipe.stages[row["stage"]]
                best = self.folder.save("best", self._checkpoint(row, self._eval_model(stage), full=False))
                self.hook.zoo_on_checkpoint_saved(run=self.info, path=str(best), kind="best")
            path = self.folder.save("last", content)
            self.hook.zoo_on_checkpoint_saved(run=self.info, path=str(path), kind="last")
        distributed.barrier(self.dist)

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        if state.get("ema_state_dict"):
            ema_state = state["ema_state_dict"]
            self.ema = ModelEma(self.model, ema_state["decay"])
            self.ema.load_state_dict(ema_state)
        self.position = Position(state["stage"], state["epoch_in_stage"], state["epoch"], state["step"])
        engine_state = state["engine_state"]
        self.best = dict(engine_state["best"])
        self.baseline = engine_state["baseline"]
        self.early_stop_state = engine_state["early_stop"]
        self.nonfinite.skipped = engine_state["nonfinite_skipped"]
        self.history = list(engine_state["history"])
        restore_rng_states(state["rng_states"])
        if self.dist.is_main:
            self.folder.trim_metrics(self.position.epoch)
        log.info("resumed at stage %d, epoch %d of that stage (%d epochs done)", self.position.stage, self.position.epoch_in_stage + 1, self.position.epoch)
