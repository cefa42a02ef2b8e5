"""The Engine: runs a recipe's stages in order and owns the training step.

It sequences; the collaborators decide: the :class:`~.schedule.TrainingSchedule` says which
groups train at which rate, :class:`~.setup.StageSetup` puts the model in that shape (freezing,
cache, DDP/compile), :mod:`.guards` track the best and stop stages and runs, :mod:`.state`
lays out checkpoints and restores them, :mod:`.rundir` writes them. Each epoch starts from a
seed derived from the run seed and the epoch number, so a resumed run replays exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from ..checkpoint import NonFiniteError, check_finite
from ..groups import LayerGroups
from ..optim import apply_learning_rates, build_optimizer, current_rates
from ..specs import InputConfig, Recipe, Stage
from . import distributed
from .device import DeviceConfig
from .ema import ModelEma
from .evaluation import evaluate_model
from .gradflow import GradientFlow, stage_line
from .guards import Best, EarlyStopping, NonFiniteGuard, Stop, StopReason, check_drift, drift_ratios, drift_violations
from .loading import batches
from .logs import TensorBoardWriter, format_row, progress
from .options import RunInfo, RunOptions
from .rundir import BASELINE_FILE, RunFolder
from .schedule import TrainingSchedule, lr_factor
from .setup import StageSetup
from .state import Position, RunState, Trained, checkpoint_content, restore, seed_everything
from .strategy import Strategy, is_sharded, model_state, optimizer_state, shard
from .summary import FIRST_STEPS_TIMED, Eta, duration, summary_block
from .task import Task, TaskData

log = logging.getLogger(__name__)


@attrs.frozen
class RunContext:
    """Everything a run is made of besides the model: decided before the Engine starts."""

    options: RunOptions
    recipe: Recipe
    task: Task
    data: TaskData
    input_config: InputConfig
    schedule: TrainingSchedule
    device: DeviceConfig
    dist: distributed.DistInfo
    folder: RunFolder
    info: RunInfo
    hook: Any
    seed: int
    provenance: Mapping[str, Any]
    nonfinite_limit: int = 3


@attrs.frozen
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: Stop | None  # why the run ended before its last epoch, if it did

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
            "stopped": str(self.stopped) if self.stopped else None,
        }


def _clear_grads(params: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` for the parameters that can have gradients.

    Frozen parameters never get one, and walking every param group costs milliseconds per step.
    """
    for param in params:
        param.grad = None


class Engine:
    """Runs one recipe on one model; see the module docstring."""

    def __init__(self, model: nn.Module, groups: LayerGroups, context: RunContext) -> None:
        device = context.device
        self.model = model.to(device.device)
        if device.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if context.options.strategy is Strategy.FSDP and context.dist.enabled:
            self.model = shard(self.model, groups)  # before the optimizer: it holds the shards
        self.sharded = is_sharded(self.model)
        self.groups, self.context, self.recipe = groups, context, context.recipe
        options = context.options
        self.flow = GradientFlow(
            self.model, groups, dist=context.dist, sharded=self.sharded, enabled=options.gradient_flow, strict=options.strict_groups,
            scaler=context.device.use_scaler,
        )  # after sharding: it watches the parameters the optimizer steps
        self.task, self.dist, self.folder, self.hook = context.task, context.dist, context.folder, context.hook
        recipe = context.recipe
        self.optimizer = build_optimizer(self.model, groups, kind=recipe.optimizer, weight_decay=recipe.weight_decay, momentum=recipe.momentum)
        self.scaler = device.scaler()
        self.ema: ModelEma | None = None
        self.state = RunState(Position(), Best(context.task.monitor[0], context.task.monitor[1]))
        self.nonfinite = NonFiniteGuard(context.nonfinite_limit)
        self.setup = StageSetup(
            self.model, groups, self.optimizer, task=context.task, data=context.data, input_config=context.input_config,
            device=device, dist=context.dist, options=context.options, hook=context.hook, folder=context.folder.path,
        )  # fmt: skip
        self._tensorboard = TensorBoardWriter(context.folder.path / "tensorboard") if context.dist.is_main else None
        self.eta = Eta(recipe)
        self._estimated_first_epoch = False

    @property
    def trained(self) -> Trained:
        return Trained(self.model, self.optimizer, self.scaler, self.ema, self.recipe, self.context.provenance)

    # -- the run --------------------------------------------------------------------------------

    def run(self, resume: Mapping[str, Any] | None = None) -> RunResult:
        try:
            stopped = self._run_stages(resume)
        finally:
            self.setup.close()
            if self._tensorboard is not None:
                self._tensorboard.close()
        if self.dist.is_main and "last" not in self.context.options.keep:
            self.folder.drop_last()  # written every epoch for --resume; not kept once the run has ended
        best_path = self.folder.best() if self.folder.best().exists() else None
        last_path = self.folder.last() if self.folder.last().exists() else None
        return RunResult(self.folder.path, best_path, last_path, self.state.best.to_dict(), self.state.history, stopped)

    def _run_stages(self, resume: Mapping[str, Any] | None) -> Stop | None:
        if self.dist.is_main:
            for line in self._summary().splitlines():  # one record per line: each carries the log prefix
                log.info("%s", line)
        if resume is not None:
            self._restore(resume)
        else:
            # the starting weights' validation losses, before any step: what the drift guard compares
            # each epoch against, and what `zoo report` checks the trained model's loss against
            self.state.baseline = self._validate()
            if self.dist.is_main:
                self.folder.write_json(BASELINE_FILE, self.state.baseline)
        stopped = None
        for stage_index in range(self.state.position.stage, len(self.recipe.stages)):
            stopped = self._run_stage(stage_index, self.recipe.stages[stage_index])
            if stopped is not None and stopped.ends_run:
                break
        return stopped

    def _summary(self) -> str:
        context, task = self.context, self.task
        describe = getattr(task, "describe_data", None)
        data = context.data
        data_lines = describe(data) if callable(describe) else [f"data    {data.root} ({data.split}): {len(data.train)} train and {len(data.val)} val items"]
        first = self.recipe.stages[0]
        transforms = getattr(task, "describe_transforms", None)
        inputs = transforms(context.input_config, first.augment) if callable(transforms) else context.input_config.describe()
        order = [group.name for group in self.groups]
        trainable = [[name for name in order if name in context.schedule.trainable(i, 0)] for i in range(len(self.recipe.stages))]
        return summary_block(
            data_lines=data_lines, model=context.info.model, provenance=context.provenance, recipe=self.recipe, trainable=trainable,
            device=context.device.to_dict(), world_size=self.dist.world_size, inputs=inputs, run_dir=str(self.folder.path),
        )  # fmt: skip

    def _run_stage(self, stage_index: int, stage: Stage) -> Stop | None:
        position = self.state.position
        first_epoch = position.epoch_in_stage if stage_index == position.stage else 0
        self.hook.zoo_on_stage_start(run=self.context.info, stage_index=stage_index, stage=stage)
        self._begin_stage(stage)
        stopper = EarlyStopping(stage.early_stop) if stage.early_stop else None
        if stopper is not None and self.state.early_stop and first_epoch > 0:
            stopper.load_state_dict(self.state.early_stop)
        stopped, row = None, {}
        for epoch_in_stage in range(first_epoch, stage.epochs):
            row, stopped = self._run_epoch(stage_index, stage, epoch_in_stage, stopper)
            if stopped is not None:
                break
        line = stage_line([r for r in self.state.history if r["stage"] == stage_index], [group.name for group in self.groups])
        if line is not None and self.dist.is_main:
            log.info("stage %d (%s) %s", stage_index, stage.name or "-", line)
        self.hook.zoo_on_stage_end(run=self.context.info, stage_index=stage_index, stage=stage, metrics=row)
        return stopped

    def _run_epoch(self, stage_index: int, stage: Stage, epoch_in_stage: int, stopper: EarlyStopping | None) -> tuple[dict[str, Any], Stop | None]:
        schedule = self.context.schedule
        self.setup.apply(stage_index, stage, schedule.trainable(stage_index, epoch_in_stage), schedule.rates(stage_index, epoch_in_stage))
        seed_everything(self._epoch_seed(self.state.position.epoch))
        started = time.perf_counter()
        train_stats = self._train_epoch(stage_index, stage, epoch_in_stage)
        train_stats["train_seconds"] = round(time.perf_counter() - started, 4)
        val = self._validate(stage)
        # after validation, which must not move a frozen tensor either; before anything is saved
        train_stats.update(self.flow.end_epoch(
            stage_index=stage_index, stage_name=stage.name, where=f"stage {stage_index} ({stage.name or '-'}) epoch {epoch_in_stage + 1}",
            clip=stage.grad_clip, rates=self.setup.rates,
        ))  # fmt: skip
        row = self._row(stage_index, stage, epoch_in_stage, train_stats, val, time.perf_counter() - started)
        improved = self.state.best.update(val, self.state.position.epoch)
        early = stopper.update(val) if stopper is not None else False
        drift = check_drift(stage.drift_guard, self.state.baseline, val, f"stage {stage_index} epoch {epoch_in_stage + 1}")
        last_epoch = early or epoch_in_stage + 1 == stage.epochs
        self.state.early_stop = stopper.state_dict() if stopper is not None else None
        position = self.state.position
        self.state.position = Position(
            stage=stage_index + 1 if last_epoch else stage_index,
            epoch_in_stage=0 if last_epoch else epoch_in_stage + 1,
            epoch=position.epoch + 1,
            step=position.step,
        )
        if drift:
            row["stop"] = {
                "reason": StopReason.DRIFT.value,
                "detail": "; ".join(drift_violations(stage.drift_guard, self.state.baseline or {}, val)),
            }
        elif early and stopper is not None:
            spec = stopper.spec
            row["stop"] = {
                "reason": StopReason.EARLY_STOP.value,
                "detail": f"{spec.monitor} did not improve on {stopper.best:.4g} for {spec.patience} epochs",
            }
        self._save_epoch(row, improved, finished_stage=stage_index if (last_epoch or drift) else None)
        self.hook.zoo_on_epoch_end(run=self.context.info, epoch=row["epoch"] - 1, metrics=row)  # the hook's index is from 0
        if drift:
            return row, Stop(StopReason.DRIFT, stage_index, epoch_in_stage + 1)
        if early:
            stop = Stop(StopReason.EARLY_STOP, stage_index, epoch_in_stage + 1)
            log.info("stage %d (%s): %s", stage_index, stage.name, stop)
            return row, stop
        return row, None

    def _epoch_seed(self, epoch: int) -> int:
        return (self.context.seed * 1_000_003 + epoch) % 2**31

    def _begin_stage(self, stage: Stage) -> None:
        self.setup.begin(stage, self.recipe)
        if stage.ema and self.ema is None:
            self.ema = ModelEma(self.model, stage.ema)
        elif stage.ema and self.ema is not None:
            self.ema.decay = stage.ema

    # -- one epoch ----------------------------------------------------------------------------------

    def _all_finite(self, value: float) -> float:
        """The loss value, made non-finite on every rank if it is on any (so all skip together)."""
        if not self.dist.enabled:
            return value
        flag = torch.tensor([0.0 if np.isfinite(value) else 1.0], device=self.context.device.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return float("nan") if flag.item() else value

    def _train_epoch(self, stage_index: int, stage: Stage, epoch_in_stage: int) -> dict[str, float]:
        setup, device = self.setup, self.context.device
        epoch = self.state.position.epoch
        loader = setup.train_loader(epoch, self._epoch_seed(epoch), self.context.seed)
        steps = len(loader)
        augment_generator = torch.Generator().manual_seed(self._epoch_seed(self.state.position.epoch) + 1)
        setup.train_forward.train()
        self.model.train()
        totals: dict[str, float] = {}
        count = 0
        where = f"stage {stage_index} epoch {epoch_in_stage + 1}"
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.flow.begin_epoch(stage_index, setup.trainable or frozenset(), steps, extra=trainable)
        description = f"stage {stage_index} ({stage.name}) {epoch_in_stage + 1}/{stage.epochs}"
        started = time.perf_counter()
        for index, batch in enumerate(progress(batches(loader), total=steps, description=description, enabled=self.dist.is_main)):
            apply_learning_rates(self.optimizer, setup.rates, lr_factor(stage, epoch_in_stage * steps + index, steps))
            batch = self.task.to_device(batch, device.device, device.channels_last and setup.cached is None)
            if setup.cached is None:
                batch = self.task.augment_batch(batch, stage.augment, augment_generator)
            with device.autocast():
                outputs = self.task.forward(setup.train_forward, batch)
                losses = self.task.loss(outputs, batch, loss_scales=stage.loss_scales, loss_norm=stage.loss_norm, recipe=self.recipe)
            loss = losses["loss"]
            if not self.nonfinite.check(self._all_finite(float(loss.detach())), where):
                _clear_grads(trainable)
                continue
            self._step(loss, stage, trainable)
            if not self._estimated_first_epoch and index + 1 == FIRST_STEPS_TIMED and steps > FIRST_STEPS_TIMED:
                self._estimated_first_epoch = True
                if self.dist.is_main:
                    per_step = (time.perf_counter() - started) / FIRST_STEPS_TIMED
                    log.info("first epoch: about %s (%d steps, %.0f ms each so far)", duration(per_step * steps), steps, per_step * 1000)
            size = self.task.batch_size(batch)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) * size
            count += size
        stats = {("train_loss" if k == "loss" else f"train_{k}"): v / max(count, 1) for k, v in totals.items()}
        stats["train_steps"] = steps
        return stats

    def _step(self, loss: torch.Tensor, stage: Stage, trainable: list[torch.Tensor]) -> None:
        self.scaler.scale(loss).backward()
        if stage.grad_clip or self.flow.enabled:
            self.scaler.unscale_(self.optimizer)  # the figures and the clip see true gradients under AMP
        measured = self.flow.record()
        if stage.grad_clip and measured is not None:  # the norm the figures took is the one clip_grad_norm_ would take
            total, params = measured
            torch.nn.utils.clip_grads_with_norm_(params, stage.grad_clip, total)
        elif stage.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        _clear_grads(trainable)
        if self.ema is not None and stage.ema:
            self.ema.update(self.model)
        self.state.position.step += 1

    # -- validation, records, checkpoints ---------------------------------------------------------

    def _eval_model(self, stage: Stage | None) -> nn.Module:
        return self.ema.module if (self.ema is not None and stage is not None and stage.ema) else self.model

    def _validate(self, stage: Stage | None = None) -> dict[str, float]:
        result = None
        setup = self.setup
        if self.dist.is_main or self.sharded:  # a sharded model's forward needs every process
            model = self._eval_model(stage)
            on_features = setup.val_cached is not None and model is self.model
            result = evaluate_model(
                setup.head if on_features else model,
                self.task,
                setup.val_loader(on_features=on_features),
                data=self.context.data,
                device=self.context.device,
                loss_scales=stage.loss_scales if stage else None,
            )
        return distributed.broadcast(self.dist, result)

    def _row(self, stage_index: int, stage: Stage, epoch_in_stage: int, train: Mapping[str, float], val: Mapping[str, float], seconds: float) -> dict[str, Any]:
        setup = self.setup
        row: dict[str, Any] = {
            "epoch": self.state.position.epoch + 1,  # counted from 1, as the console and `zoo plot` count
            "stage": stage_index,
            "stage_name": stage.name,
            "epoch_in_stage": epoch_in_stage,
            "stage_epochs": stage.epochs,
            "step": self.state.position.step,
            **train,
            **val,
            "trainable": [group.name for group in self.groups if group.name in (setup.trainable or ())],
            "cached": setup.cached is not None,
            "cache_seconds": round(setup.take_cache_seconds(), 4),
            "skipped_steps": self.nonfinite.skipped,
            "seconds": round(seconds, 4),
        }
        row.update({f"lr/{group}": rate for group, rate in setup.rates.items()})
        row.update(drift_ratios(self.state.baseline, val))
        row.update({f"lr_now/{group}": rate for group, rate in current_rates(self.optimizer).items()})
        self.state.history.append(row)
        self.state.nonfinite_skipped = self.nonfinite.skipped
        if self.dist.is_main:
            log.info("%s  %s", format_row(row), self.eta.after(stage_index, epoch_in_stage, seconds))
        return row

    def _save_epoch(self, row: Mapping[str, Any], improved: bool, *, finished_stage: int | None) -> None:
        """Write the epoch's metrics and checkpoints: the stage's and ``best.pt`` first, ``last.pt`` last.

        ``last.pt`` is what ``--resume`` continues from. Written last, a kill between any two
        writes resumes from the previous epoch, replays this one and writes every file again, so
        no ``best.pt`` or stage checkpoint is ever lost.
        """
        # non-finite weights are never saved: checked once, before any of this epoch's files, and on
        # every rank (their weights are the same; a sharded model's are checked on rank 0 and the
        # verdict shared) so that all stop together
        where = f"{self.folder.path} (weights after epoch {row['epoch']})"
        gathered = (model_state(self.model), optimizer_state(self.model, self.optimizer)) if self.sharded else None
        if gathered is None:
            check_finite(self.model.state_dict(), where)
        else:
            problem = None
            if self.dist.is_main:
                try:
                    check_finite(gathered[0], where)
                except NonFiniteError as exc:
                    problem = exc
            problem = distributed.broadcast(self.dist, problem)
            if problem is not None:
                raise problem
        if self.dist.is_main:
            self.folder.append_metrics(row)
            if self._tensorboard is not None:
                self._tensorboard.write(row, row["epoch"])
            content = checkpoint_content(self.state, self.trained, row, gathered=gathered)
            keep = self.context.options.keep
            if finished_stage is not None and "stages" in keep:  # weights and metadata: resuming reads last.pt
                name = f"stage-{finished_stage}-{self.recipe.stages[finished_stage].name or 'stage'}"
                weights = checkpoint_content(self.state, self.trained, row, full=False, gathered=gathered)
                self._saved(self.folder.save("stage", weights, name), "stage")
            if improved and "best" in keep:
                stage = self.recipe.stages[row["stage"]]
                best = checkpoint_content(self.state, self.trained, row, weights=self._eval_model(stage), full=False, gathered=gathered)
                self._saved(self.folder.save("best", best), "best")
            self._saved(self.folder.save("last", content), "last")
        distributed.barrier(self.dist)

    def _saved(self, path: Path, kind: str) -> None:
        self.hook.zoo_on_checkpoint_saved(run=self.context.info, path=str(path), kind=kind)

    def _restore(self, content: Mapping[str, Any]) -> None:
        self.state, self.ema = restore(content, self.trained)
        self.nonfinite.skipped = self.state.nonfinite_skipped
        position = self.state.position
        if self.dist.is_main:
            self.folder.trim_metrics(position.epoch)
        if position.stage >= len(self.recipe.stages):
            log.info("%s: the run is finished (%d epochs, all %d stages); nothing to resume", self.folder.path, position.epoch, len(self.recipe.stages))
            return
        log.info("resumed at stage %d, epoch %d of that stage (%d epochs done)", position.stage, position.epoch_in_stage + 1, position.epoch)
