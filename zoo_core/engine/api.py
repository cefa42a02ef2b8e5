"""``finetune`` and ``evaluate``: everything between a command line and the Engine.

``plan_run`` checks what can be checked without building a model or writing a file (recipe
and overrides, task, data, batch split, run folder). ``prepare`` builds the starting model
(:mod:`.start`), its layer groups and the training schedule, and returns a
:class:`PreparedRun` whose transfer plan the caller may show before :meth:`PreparedRun.run`
starts training. ``finetune`` is the two in one call.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from ..anatomy import input_config
from ..checkpoint import KNOWN_PREFIXES, read_checkpoint
from ..datasets import DatasetReader, pick_reader
from ..errors import CheckpointError, DataError, RunError
from ..groups import layer_groups
from ..models import build_skeleton, create_model
from ..paths import display
from ..registry import Registry, default_registry
from ..specs import InputConfig, Recipe
from . import distributed
from .device import configure, pick_device
from .evaluation import evaluate_model
from .loading import default_workers, make_loader
from .loop import Engine, RunContext
from .options import RunInfo, RunOptions
from .recipes import apply_overrides, check_augment_keys, check_batch_split, recipe_warnings
from .rundir import RunFolder
from .schedule import TrainingSchedule
from .start import start_model
from .strategy import check_strategy
from .task import Task, TaskData

log = logging.getLogger(__name__)


def default_run_dir(recipe: str, model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{recipe}-{Path(model).stem if model.endswith(('.pt', '.pth', '.safetensors')) else model}")
    return Path("runs") / slug.strip("-")


@attrs.frozen
class RunPlan:
    """Everything about a run that can be checked before any model is built or file written."""
    options: RunOptions
    recipe: Recipe
    seed: int
    model: str  # the name to build: the task may compose it (a backbone name becomes NAME+detector/fcos)
    task_name: str
    task: Task
    data: TaskData
    folder: RunFolder
    record: dict[str, Any]
    data_format: str | None = None  # the dataset reader that read the data, for a task with readers


def plan_run(options: RunOptions, *, registry: Registry, world_size: int = 1, check_folder: bool = True) -> RunPlan:
    """Check a run's inputs — recipe, task, data, batch split, run folder — without side effects.

    ``check_folder=False`` leaves the run folder to the process that writes it (global rank 0):
    another machine may not see it.
    """
    recipe = apply_overrides(registry.recipe(options.recipe), options.overrides)
    seed = recipe.seed if options.seed is None else options.seed
    task_name = options.task or recipe.task or "classification"
    task = registry.task(task_name)
    check_augment_keys(recipe, task)
    check_batch_split(recipe, world_size)
    check_strategy(options.strategy, recipe, compile_backend=options.compile_backend)
    model = _model_name(task, task_name, options, registry)
    kept: dict[str, Any] = {"classes": options.classes} if options.classes is not None else {}  # tasks without --classes keep working
    reader = data_reader(registry, task_name, options.data, options.data_format)
    if reader is not None:  # tasks without dataset readers keep working
        kept["reader"] = reader
    data = task.load_data(options.data, seed=seed, val_fraction=options.val_fraction, **kept)
    folder = RunFolder(options.run_dir or default_run_dir(options.recipe, options.model))
    record = {
        "recipe": recipe.to_dict(),
        "model": options.model,
        **({"architecture": model} if model != options.model else {}),
        "task": task_name,
        "data": str(options.data.resolve()),
        **({"data_format": reader.name} if reader is not None else {}),
        "seed": seed,
        "val_fraction": options.val_fraction,
        "classes": list(data.class_names),
        "world_size": world_size,
        "pretrained": options.pretrained,
    }
    if check_folder:
        folder.check(record, resume=options.resume)
    return RunPlan(options, recipe, seed, model, task_name, task, data, folder, record, reader.name if reader is not None else None)


def data_reader(
    registry: Registry, task_name: str, data: Path, data_format: str | None, recorded: str | None = None
) -> DatasetReader | None:
    """The dataset reader for ``data``: ``data_format``'s, else ``recorded`` (a run's) if it recognises
    ``data``, else the first that does; ``None`` for a task that reads its data itself."""
    readers = registry.readers_for(task_name)
    if not readers:
        if data_format is not None:
            with_readers = sorted({reg.value.task for reg in registry.dataset_readers.values()})
            raise RunError(
                f"--data-format applies to tasks with data readers ({', '.join(with_readers) or 'none'}); "
                f"task '{task_name}' reads its own data layout, so leave --data-format out"
            )
        return None
    if data_format is None and recorded is not None:
        found = next((reader for reader in readers if reader.name == recorded), None)
        if found is not None and found.recognises(Path(data)):
            return found
    return pick_reader(readers, Path(data), data_format, task_name)


def _model_name(task: Task, task_name: str, options: RunOptions, registry: Registry) -> str:
    """The name the run builds: a task with ``model_name`` composes it (detection puts a detector over a backbone)."""
    compose = getattr(task, "model_name", None)
    if callable(compose):
        return compose(options.model, detector=options.detector, registry=registry)
    if options.detector is not None:
        raise RunError(f"--detector applies to --task detection, not to '{task_name}'; leave it out or pick the task")
    return options.model


def check_recipe_fits(plan: RunPlan, model: nn.Module) -> None:
    """The task's check of the recipe's stage settings against the model (loss component names …)."""
    check = getattr(plan.task, "check_recipe", None)
    if callable(check):
        check(plan.recipe, model)


def check_model(plan: RunPlan, *, registry: Registry) -> None:
    """Build the model's skeleton (meta device) and its schedule: unknown groups and missing rates fail here.

    The launcher of a multi-process run calls it so that bad input fails once, before torchrun starts.
    """
    resolved = registry.resolve(plan.model)
    skeleton = build_skeleton(resolved, registry=registry, num_classes=plan.task.num_classes(plan.data), **plan.options.model_options)
    groups = layer_groups(skeleton, granularity=plan.recipe.granularity, registry=registry)
    TrainingSchedule(plan.recipe, groups, registry.plugins.hook.zoo_unfreeze_schedule(recipe=plan.recipe, groups=groups))
    check_recipe_fits(plan, skeleton)


@attrs.frozen
class PreparedRun:
    """A run whose model is built and checked; nothing is written until :meth:`run`."""
    plan: RunPlan
    model: Any
    groups: Any
    context: Any  # the engine's RunContext
    transfer_plan: Any  # the TransferPlan that carried the starting weights in, if one did

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.context.provenance)

    def run(self) -> Any:
        """Train: hold the run folder, write its records, run the engine; return a :class:`RunResult`.

        A run that fails before its first checkpoint removes what it wrote, so the corrected
        command can run in the same folder.
        """

        folder, dist, resume = self.plan.folder, self.context.dist, self.plan.options.resume
        created = not folder.path.exists()
        # rank 0 holds the run folder for the whole run: a second process on it is refused at once
        with folder.locked() if dist.is_main else contextlib.nullcontext():
            try:
                if dist.is_main:
                    self._write_records()
                    folder.clear_failure()
                distributed.barrier(dist)
                engine = Engine(self.model, self.groups, self.context)
                # rank 0 reads the checkpoint and hands it to the others, whose machines may not see the folder
                found = distributed.broadcast(dist, folder.resume_checkpoint() if resume and dist.is_main else None)
                if resume and found is None and dist.is_main:
                    log.info("%s: no epoch finished before the run stopped; starting from the first epoch", folder.path)
                    folder.trim_metrics(0)
                return engine.run(found[0] if found is not None else None)
            except BaseException as exc:
                if dist.is_main and not resume:
                    folder.discard_if_unstarted(created)
                if dist.is_main:
                    folder.record_failure(exc)
                raise
            finally:
                distributed.shutdown(dist)

    def _write_records(self) -> None:
        folder = self.plan.folder
        folder.start(self.plan.record, self.plan.recipe.to_dict(), resume=self.plan.options.resume)  # checked again, under the lock
        folder.write_json("provenance.json", self.provenance)
        if self.provenance.get("transfer"):
            folder.write_json("transfer.json", self.provenance["transfer"])
        folder.write_json("groups.json", self.groups.to_rows())


def prepare(options: RunOptions, *, registry: Registry) -> PreparedRun:
    """Everything before the first step: inputs checked, the starting model built, the schedule computed."""


    chosen = pick_device(options.device)
    dist = distributed.init(chosen)
    plan = plan_run(options, registry=registry, world_size=dist.world_size, check_folder=dist.is_main)
    device = configure(chosen)
    torch.manual_seed(plan.seed)  # new heads start from the same initialisation on every rank and every run
    start = start_model(
        plan.model, registry=registry, class_names=plan.data.class_names, num_classes=plan.task.num_classes(plan.data),
        pretrained=options.pretrained, **options.model_options,
    )  # fmt: skip
    check_recipe_fits(plan, start.model)
    if dist.is_main and not options.resume:  # said once per run, by one process
        for warning in recipe_warnings(plan.recipe, pretrained=start.provenance.get("weights_sha256") is not None):
            log.warning("recipe '%s': %s", plan.recipe.name, warning)
    inputs = input_config(start.model, registry.plugins.hook, image_size=options.image_size)
    provenance = {
        **start.provenance,
        "task": plan.task_name,
        "data": {
            "root": str(options.data.resolve()), "seed": plan.seed, "val_fraction": options.val_fraction, "split": plan.data.split,
            **({"format": plan.data_format} if plan.data_format is not None else {}),
            **({"classes": list(options.classes)} if options.classes is not None else {}),
        },
        "input": inputs.to_dict(),
    }
    groups = layer_groups(start.model, granularity=plan.recipe.granularity, registry=registry)
    schedule = TrainingSchedule(plan.recipe, groups, registry.plugins.hook.zoo_unfreeze_schedule(recipe=plan.recipe, groups=groups))
    info = RunInfo(plan.folder.path, plan.recipe, plan.model, plan.task_name, dist.rank, dist.world_size)
    context = RunContext(
        options, plan.recipe, plan.task, plan.data, inputs, schedule, device, dist, plan.folder, info, registry.plugins.hook, plan.seed, provenance
    )  # fmt: skip
    return PreparedRun(plan, start.model, groups, context, start.plan)


def finetune(recipe: str, model: str, data: str | Path, *, registry: Registry | None = None, **choices: Any) -> Any:
    """Run ``recipe`` on ``model`` over the data folder ``data``; return a :class:`~.loop.RunResult`.

    ``choices`` are :class:`~.options.RunOptions` fields (``run_dir``, ``resume``,
    ``overrides``, ``pretrained``, ``image_size``, ``in_chans``, ``val_fraction``, ``workers``,
    ``device``, ``compile_backend``, ``use_cache``, ``seed``, ``task``, ``detector``, ``classes``,
    ``data_format``).
    Every input is checked
    before the run folder is written.
    """
    options = RunOptions.of(recipe, model, data, **choices)
    return prepare(options, registry=registry or default_registry()).run()


# --- evaluation ---------------------------------------------------------------------------------------


def model_from_checkpoint(path: str | Path, *, registry: Registry | None = None) -> tuple[Any, Any]:
    """Rebuild the model a Zoo checkpoint belongs to (from its provenance) and load its weights."""
    registry = registry or default_registry()
    checkpoint = read_checkpoint(path, strip=KNOWN_PREFIXES)
    provenance = checkpoint.provenance
    if not provenance.get("model"):
        raise CheckpointError(f"{display(path)}: has no provenance naming its model; it was not written by Zoo")
    model = create_model(provenance["model"], pretrained=False, num_classes=provenance.get("num_classes"), registry=registry)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model, checkpoint


def recorded_inputs(provenance: Mapping[str, Any], model: Any, registry: Registry) -> InputConfig:
    """The input config the run trained with, as its provenance records it."""
    recorded = dict(provenance.get("input") or {})
    known = {field.name for field in attrs.fields(InputConfig)}
    fallback = input_config(model, registry.plugins.hook, image_size=recorded.get("size"))
    return attrs.evolve(fallback, **{key: value for key, value in recorded.items() if key in known})


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    split: str = "val",
    device: str | None = None,
    data_format: str | None = None,
    workers: int | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Evaluate a Zoo checkpoint on a data folder, with the split its run used: the metrics, and
    what the task adds per class (classification: ``per_class`` and ``confusion_matrix``).

    The data is read by ``data_format``'s reader, else by the reader the run recorded when it
    recognises ``data``, else by the first reader that does.
    """
    registry = registry or default_registry()
    model, loaded = model_from_checkpoint(checkpoint, registry=registry)
    provenance = loaded.provenance
    task_name = task or provenance.get("task") or "classification"
    task_obj = registry.task(task_name)
    data_info: Mapping[str, Any] = provenance.get("data") or {}
    kept: dict[str, Any] = {"classes": data_info["classes"]} if data_info.get("classes") is not None else {}  # the run's --classes
    reader = data_reader(registry, task_name, Path(data), data_format, recorded=data_info.get("format"))
    if reader is not None:
        kept["reader"] = reader
    task_data = task_obj.load_data(
        Path(data), seed=int(data_info.get("seed", 0)), val_fraction=float(data_info.get("val_fraction", 0.2)), **kept
    )
    expected = provenance.get("class_names")
    if expected and list(expected) != list(task_data.class_names):
        raise DataError(
            f"{data}: classes {', '.join(task_data.class_names)} differ from the checkpoint's {', '.join(expected)}; "
            "evaluate on data with the same class folders"
        )
    device_cfg = configure(pick_device(device))
    model = model.to(device_cfg.device)
    items = {"val": task_data.val, "train": task_data.train, "all": [*task_data.train, *task_data.val]}[split]
    evaluated = attrs.evolve(task_data, val=items)
    dataset = task_obj.dataset(evaluated, "val", input_config=recorded_inputs(provenance, model, registry), augment={})
    loader = make_loader(
        dataset, collate=task_obj.collate, batch_size=64, sampler=torch.utils.data.SequentialSampler(dataset), seed=0,
        workers=default_workers(items=len(dataset)) if workers is None else workers, pin_memory=device_cfg.pin_memory, persistent=False,
    )  # fmt: skip
    return evaluate_model(model, task_obj, loader, data=evaluated, device=device_cfg, details=True)
