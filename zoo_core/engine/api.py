"""``finetune`` and ``evaluate``: everything between a command line and the Engine.

``finetune`` resolves the recipe (with ``--set`` overrides), the task and the data, builds the
starting model — from a registry name, or from a checkpoint carried in through a
:class:`~zoo_core.transfer.TransferPlan` whose report is printed and saved — and runs it.
Every input error surfaces before the first training step.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomllib

from ..catalog import Where, recipe_from_mapping
from ..errors import RecipeError, ZooError, did_you_mean
from ..registry import Registry, default_registry
from ..specs import Recipe

log = logging.getLogger(__name__)


# --- recipe overrides ---------------------------------------------------------------------------


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


# --- the starting model --------------------------------------------------------------------------


def build_start_model(
    name: str, *, registry: Registry, class_names: Sequence[str], pretrained: bool, report: bool
) -> tuple[Any, dict[str, Any]]:
    """The model to fine-tune and its provenance.

    A checkpoint (``file:`` or a path, or an alias to one) is carried into its architecture with
    the new class count through a transfer plan (class-aware head rows); any other name is
    built by its source, with its pretrained weights when asked.
    """
    from ..fileio import sha256_file
    from ..models import build_model, create_model
    from ..provenance import make_provenance
    from ..transfer import plan_transfer, validate_source
    from ..weights import fetch

    resolved = registry.resolve(name)
    num_classes = len(class_names)
    if resolved.source == "file":
        path = Path(resolved.weights.path)
        model = create_model(resolved.architecture, pretrained=False, num_classes=num_classes, registry=registry)
        plan = plan_transfer(path, model, target_classes=class_names, registry=registry)
        validate_source(plan)
        transfer = plan.apply(model)
        if report:
            print(plan.report())
        digest = sha256_file(path)
        source_provenance = resolved.extra.get("provenance", {})
        provenance = make_provenance(
            model=resolved.architecture,
            base_model=source_provenance.get("base_model") or resolved.architecture,
            source="file",
            weights_sha256=digest,
            num_classes=num_classes,
            class_names=class_names,
            transfer=transfer,
            parent={"path": str(path), "sha256": digest, "name": resolved.requested},
        )
        return model, provenance
    model = build_model(resolved, registry=registry, pretrained=pretrained, num_classes=num_classes)
    digest = fetch(resolved)[0].sha256 if pretrained else None
    provenance = make_provenance(
        model=resolved.name,
        base_model=resolved.name if pretrained else None,
        source=resolved.source,
        revision=resolved.revision,
        weights_sha256=digest,
        num_classes=num_classes,
        class_names=class_names,
    )
    return model, provenance


def default_run_dir(recipe: str, model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{recipe}-{Path(model).stem if model.endswith(('.pt', '.pth', '.safetensors')) else model}")
    return Path("runs") / slug.strip("-")


# --- the public functions ------------------------------------------------------------------------


@attrs.frozen
class RunPlan:
    """Everything about a run that can be checked before any model is built or file written."""

    recipe: Recipe
    seed: int
    task_name: str
    task: Any
    data_root: Path
    data: Any
    folder: Any
    record: dict[str, Any]


def check_groups(recipe: Recipe, model: Any, registry: Registry) -> tuple[Any, Any]:
    """The model's layer groups and the unfreeze schedule; unknown groups and missing rates fail here."""
    from ..groups import layer_groups
    from ..optim import stage_learning_rates

    groups = layer_groups(model, granularity=recipe.granularity, registry=registry)
    schedule = registry.plugins.hook.zoo_unfreeze_schedule(recipe=recipe, groups=groups)
    for index, stage in enumerate(recipe.stages):
        for epoch in range(stage.epochs):
            stage_learning_rates(stage.lr, groups, schedule(index, epoch), where=f"recipe '{recipe.name}' stages[{index}].lr")
    return groups, schedule


def plan_run(
    recipe: str,
    model: str,
    data: str | Path,
    *,
    task: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    pretrained: bool = True,
    val_fraction: float = 0.2,
    seed: int | None = None,
    registry: Registry | None = None,
    world_size: int = 1,
    check_model: bool = False,
) -> RunPlan:
    """Check a run's inputs — recipe, task, data, batch split, run folder — without side effects.

    ``check_model`` also builds the model's skeleton (meta device) to check groups and rates;
    the launcher of a multi-process run uses it so bad input fails once, before torchrun starts.
    """
    from .rundir import RunFolder

    registry = registry or default_registry()
    spec = apply_overrides(registry.recipe(recipe), overrides)
    seed = spec.seed if seed is None else seed
    task_name = task or spec.task or "classification"
    task_obj = registry.task(task_name)
    check_augment_keys(spec, task_obj)
    if not 0 < val_fraction < 1:
        raise ZooError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    for index, stage in enumerate(spec.stages):
        batch = stage.batch_size or spec.batch_size
        if batch % world_size:
            raise RecipeError(
                f"recipe '{spec.name}' stages[{index}]: batch size {batch} does not split over {world_size} processes; "
                f"use a multiple of {world_size} (--set batch_size=...)"
            )
    data_root = Path(data)
    task_data = task_obj.load_data(data_root, seed=seed, val_fraction=val_fraction)
    folder = RunFolder(run_dir or default_run_dir(recipe, model))
    record = {
        "recipe": spec.to_dict(),
        "model": model,
        "task": task_name,
        "data": str(data_root.resolve()),
        "seed": seed,
        "val_fraction": val_fraction,
        "classes": list(task_data.class_names),
        "world_size": world_size,
        "pretrained": pretrained,
    }
    folder.check(record, resume=resume)
    if check_model:
        from ..models import build_skeleton

        skeleton = build_skeleton(registry.resolve(model), registry=registry, num_classes=len(task_data.class_names))
        check_groups(spec, skeleton, registry)
    return RunPlan(spec, seed, task_name, task_obj, data_root, task_data, folder, record)


def finetune(
    recipe: str,
    model: str,
    data: str | Path,
    *,
    task: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    pretrained: bool = True,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    workers: int = 0,
    device: str | None = None,
    compile_backend: str | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    registry: Registry | None = None,
    print_plan: bool = False,
) -> Any:
    """Run ``recipe`` on ``model`` over the data folder ``data``; return a :class:`RunResult`.

    Every input is checked before the run folder is written; a run that fails before its
    first checkpoint removes the folder it created, so the corrected command can run there.
    """
    import torch

    from . import distributed
    from .device import configure, pick_device
    from .loop import Engine, RunInfo
    from .task import MIN_IMAGE_SIZE

    if image_size is not None and (isinstance(image_size, bool) or image_size < MIN_IMAGE_SIZE):
        raise RecipeError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size!r}")
    registry = registry or default_registry()
    chosen = pick_device(device)
    dist_info = distributed.init(chosen)
    plan = plan_run(
        recipe, model, data, task=task, run_dir=run_dir, resume=resume, overrides=overrides, pretrained=pretrained,
        val_fraction=val_fraction, seed=seed, registry=registry, world_size=dist_info.world_size,
    )
    spec, folder = plan.recipe, plan.folder
    device_cfg = configure(chosen)

    torch.manual_seed(plan.seed)  # new heads start from the same initialisation on every rank and every run
    start, provenance = build_start_model(
        model, registry=registry, class_names=plan.data.class_names, pretrained=pretrained, report=print_plan and dist_info.is_main
    )
    provenance.update(
        task=plan.task_name,
        data={"root": str(plan.data_root.resolve()), "seed": plan.seed, "val_fraction": val_fraction, "split": plan.data.split},
    )
    groups, schedule = check_groups(spec, start, registry)
    input_config = plan.task.input_config(start, image_size)
    provenance["input"] = {key: list(value) if isinstance(value, tuple) else value for key, value in input_config.items()}

    created = not folder.path.exists()
    # rank 0 holds the run folder for the whole run: a second process on it is refused at once
    with folder.locked() if dist_info.is_main else contextlib.nullcontext():
        try:
            if dist_info.is_main:
                folder.start(plan.record, spec.to_dict(), resume=resume)  # checked again, under the lock
                folder.write_json("provenance.json", provenance)
                if provenance.get("transfer"):
                    folder.write_json("transfer.json", provenance["transfer"])
                folder.write_json("groups.json", groups.to_rows())
            distributed.barrier(dist_info)
            info = RunInfo(folder.path, spec, model, plan.task_name, dist_info.rank, dist_info.world_size)
            engine = Engine(
                model=start,
                groups=groups,
                recipe=spec,
                task=plan.task,
                data=plan.data,
                input_config=input_config,
                device=device_cfg,
                dist=dist_info,
                folder=folder,
                info=info,
                hook=registry.plugins.hook,
                schedule=schedule,
                seed=plan.seed,
                provenance=provenance,
                workers=workers,
                compile_backend=compile_backend,
                use_cache=use_cache,
            )
            found = folder.resume_checkpoint() if resume else None
            if resume and found is None and dist_info.is_main:
                log.info("%s: no epoch finished before the run stopped; starting from the first epoch", folder.path)
                folder.trim_metrics(0)
            return engine.run(found[0] if found is not None else None)
        except BaseException:
            if dist_info.is_main and not resume:
                folder.discard_if_unstarted(created)
            raise
        finally:
            distributed.shutdown(dist_info)


def model_from_checkpoint(path: str | Path, *, registry: Registry | None = None) -> tuple[Any, Any]:
    """Rebuild the model a Zoo checkpoint belongs to (from its provenance) and load its weights."""
    from ..checkpoint import KNOWN_PREFIXES, read_checkpoint
    from ..errors import CheckpointError
    from ..models import create_model
    from ..paths import display

    registry = registry or default_registry()
    checkpoint = read_checkpoint(path, strip=KNOWN_PREFIXES)
    provenance = checkpoint.provenance
    if not provenance.get("model"):
        raise CheckpointError(f"{display(path)}: has no provenance naming its model; it was not written by Zoo")
    model = create_model(provenance["model"], pretrained=False, num_classes=provenance.get("num_classes"), registry=registry)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model, checkpoint


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    split: str = "val",
    device: str | None = None,
    registry: Registry | None = None,
) -> dict[str, float]:
    """Evaluate a Zoo checkpoint on a data folder, with the split its run used."""
    from ..errors import DataError
    from .device import configure, pick_device
    from .evaluation import evaluate_model

    registry = registry or default_registry()
    model, loaded = model_from_checkpoint(checkpoint, registry=registry)
    provenance = loaded.provenance
    task_obj = registry.task(task or provenance.get("task") or "classification")
    data_info: Mapping[str, Any] = provenance.get("data") or {}
    task_data = task_obj.load_data(Path(data), seed=int(data_info.get("seed", 0)), val_fraction=float(data_info.get("val_fraction", 0.2)))
    expected = provenance.get("class_names")
    if expected and list(expected) != list(task_data.class_names):
        raise DataError(
            f"{data}: classes {', '.join(task_data.class_names)} differ from the checkpoint's {', '.join(expected)}; "
            "evaluate on data with the same class folders"
        )
    device_cfg = configure(pick_device(device))
    model = model.to(device_cfg.device)
    input_config = task_obj.input_config(model, (provenance.get("input") or {}).get("size"))
    items = {"val": task_data.val, "train": task_data.train, "all": [*task_data.train, *task_data.val]}[split]
    dataset = task_obj.dataset(attrs.evolve(task_data, val=items), "val", input_config=input_config, augment={})
    return evaluate_model(model, task_obj, dataset, num_classes=len(task_data.class_names), batch_size=64, device=device_cfg)
