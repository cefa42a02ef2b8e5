"""``zoo chain``: recipes run over datasets in order, each step starting from the previous step's best.

Step *i* starts from step *i−1*'s best checkpoint; the run's transfer plan carries the backbone
and every shared tensor, and the classifier rows of classes both label sets name (by name); the
rest starts new. Each step is an ordinary run folder (``DIR/01-NAME/``), so ``zoo eval``,
``zoo plot`` and ``zoo report`` work on it. With ``compare_scratch`` each step is trained a
second time without transfer (``DIR/01-NAME-fresh/``), from the chain's starting point or from a
random initialisation (the chain's ``scratch``), with the same recipe and budget.

``DIR/chain.json`` records the chain, each step's state and, once it finished, its best
checkpoint's sha256: ``--resume`` skips finished steps (refusing one whose checkpoint changed
since), resumes the interrupted one exactly, and runs the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .bundled import data_path
from .engine.api import data_reader, finetune
from .engine.recipes import apply_overrides
from .engine.rundir import RunFolder
from .errors import RunError, ZooError
from .fileio import atomic_write_json, sha256_file
from .registry import Registry, default_registry
from .specs import Chain, ChainStep, ScratchStart

log = logging.getLogger(__name__)

CHAIN_FILE = "chain.json"
VAL_FRACTION = 0.2


class ChainError(RunError):
    """A chain cannot start or resume as asked."""


def step_folder(index: int, step: ChainStep, *, fresh: bool = False) -> str:
    return f"{index + 1:02d}-{step.name}" + ("-fresh" if fresh else "")


def _compares(step: ChainStep, compare_scratch: bool) -> bool:
    return compare_scratch if step.compare_scratch is None else step.compare_scratch


def _higher_is_better(metric: str) -> bool:
    return not metric.endswith("loss")


def _figures(folder: Path, metric: str, threshold: float | None) -> dict[str, Any]:
    """The step's metric per epoch as its run recorded it: best, final, and the first epoch that reached ``threshold``."""
    rows = [row for row in RunFolder(folder).read_metrics() if metric in row]
    values = [float(row[metric]) for row in rows]
    if not values:
        return {"best": None, "final": None, "epochs": 0, "epochs_to_threshold": None}
    better = max if _higher_is_better(metric) else min
    reached = None
    if threshold is not None:
        hits = (v >= threshold if _higher_is_better(metric) else v <= threshold for v in values)
        reached = next((epoch for epoch, hit in enumerate(hits, start=1) if hit), None)
    return {"best": better(values), "final": values[-1], "epochs": len(values), "epochs_to_threshold": reached}


def check_chain(chain: Chain, *, registry: Registry, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every step's recipe, overrides, task and data checked before the first step trains.

    Returns what each step's data holds (classes, images), for the chain's table.
    """
    found = []
    for index, step in enumerate(chain.steps):
        where = f"chain '{chain.name}' step {index + 1} ('{step.name}')"
        try:
            recipe = apply_overrides(registry.recipe(chain.recipe_of(step)), [*step.set, *overrides])
            task_name = step.task or chain.task or recipe.task or "classification"
            task = registry.task(task_name)
            root = data_path(step.data)
            kept: dict[str, Any] = {"classes": step.classes} if step.classes is not None else {}
            reader = data_reader(registry, task_name, root, step.data_format)
            if reader is not None:
                kept["reader"] = reader
            data = task.load_data(root, seed=recipe.seed, val_fraction=VAL_FRACTION, **kept)
        except ZooError as exc:  # an unknown recipe, a missing folder, classes the data lacks: said with the step
            raise ChainError(f"{where}: {exc}") from None
        found.append({"classes": len(data.class_names), "class_names": list(data.class_names), "images": {"train": len(data.train), "val": len(data.val)}})
    return found


class ChainRun:
    """One chain in one folder: its record, and each step's runs."""

    def __init__(self, chain: Chain, run_dir: Path, *, registry: Registry, compare_scratch: bool, overrides: Sequence[str], choices: Mapping[str, Any]) -> None:
        self.chain = chain
        self.path = Path(run_dir)
        self.registry = registry
        self.compare_scratch = compare_scratch
        self.overrides = tuple(overrides)
        self.choices = dict(choices)

    @property
    def record_file(self) -> Path:
        return self.path / CHAIN_FILE

    def _fresh_record(self, data: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "chain": self.chain.name,
            "spec": self.chain.to_dict(),
            "overrides": list(self.overrides),
            "compare_scratch": self.compare_scratch,
            "scratch": self.chain.scratch.value,
            "metric": self.chain.metric,
            "threshold": self.chain.threshold,
            "status": "running",
            "steps": [
                {"index": i + 1, "name": step.name, "folder": step_folder(i, step), "data": step.data,
                 "recipe": self.chain.recipe_of(step), **found, "status": "pending", "transfer": None, "fresh": None}
                for i, (step, found) in enumerate(zip(self.chain.steps, data))
            ],
        }  # fmt: skip

    def _read_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ChainError(f"{self.record_file}: unreadable chain record ({exc}); move the folder aside and run the chain again") from None

    def open(self, *, resume: bool) -> dict[str, Any]:
        data = check_chain(self.chain, registry=self.registry, overrides=self.overrides)
        record = self._read_record()
        if record is None:
            if self.path.exists() and any(self.path.iterdir()) and not resume:
                raise ChainError(f"{self.path}: exists and holds no {CHAIN_FILE}; choose another --run-dir for the chain")
            record = self._fresh_record(data)
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.record_file, record)
            return record
        if not resume:
            raise ChainError(f"{self.path}: already holds chain '{record.get('chain')}'; pass --resume to continue it, or choose another --run-dir")
        wanted = self._fresh_record(data)
        for key in ("chain", "spec", "overrides", "compare_scratch"):
            if record.get(key) != wanted[key]:
                raise ChainError(
                    f"{self.record_file}: was started with a different {key.replace('_', '-')} ({record.get(key)!r}); "
                    "resume with the same chain and options, or choose another --run-dir"
                )
        self._check_finished(record)
        return record

    def _check_finished(self, record: Mapping[str, Any]) -> None:
        """A finished step's checkpoints must be the ones the later steps started from."""
        for step in record["steps"]:
            for arm in ("transfer", "fresh"):
                done = step.get(arm) or {}
                if not done.get("checkpoint") or done.get("same_as_transfer"):
                    continue
                path = self.path / done["checkpoint"]
                state = "deleted" if not path.is_file() else "changed" if sha256_file(path) != done["sha256"] else None
                if state:
                    raise ChainError(
                        f"{path}: {state} since step {step['index']} ('{step['name']}') finished "
                        f"(its sha256 was {done['sha256'][:12]}…); restore it, or remove {self.path / step['folder']} "
                        "and the later steps' folders to train them again, then resume"
                    )

    def save(self, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.record_file, record)

    def run_arm(self, index: int, step: ChainStep, *, model: str, pretrained: bool, fresh: bool, resume: bool) -> dict[str, Any]:
        folder = self.path / step_folder(index, step, fresh=fresh)
        started = time.perf_counter()
        result = finetune(
            self.chain.recipe_of(step), model, data_path(step.data), registry=self.registry, run_dir=folder, resume=resume,
            overrides=(*step.set, *self.overrides), pretrained=pretrained, task=step.task or self.chain.task,
            image_size=self.chain.image_size, val_fraction=VAL_FRACTION, data_format=step.data_format,
            **({"classes": step.classes} if step.classes is not None else {}), **self.choices,
        )  # fmt: skip
        checkpoint = result.best_checkpoint or result.last_checkpoint
        return {
            "folder": folder.name,
            "start": model,
            "checkpoint": str(checkpoint.relative_to(self.path)),
            "sha256": sha256_file(checkpoint),
            "seconds": round(time.perf_counter() - started, 2),
            **_figures(folder, self.chain.metric, self.chain.threshold),
        }


def _scratch_is_start(chain: Chain) -> bool:
    """Whether a fresh first step would train exactly what the chain's first step trains."""
    return chain.scratch is ScratchStart.START or not chain.pretrained


def run_chain(
    chain: str | Chain,
    run_dir: str | Path,
    *,
    registry: Registry | None = None,
    resume: bool = False,
    compare_scratch: bool = False,
    overrides: Sequence[str] = (),
    on_step: Callable[[Mapping[str, Any]], None] | None = None,
    **choices: Any,
) -> dict[str, Any]:
    """Run a chain (its name or a :class:`~zoo_core.specs.Chain`) in ``run_dir``; return ``chain.json``'s content.

    ``choices`` are :func:`zoo_core.finetune` options shared by every step (``device``,
    ``workers``, ``seed``, ``use_cache`` …). ``on_step`` is told each step's record as it finishes.
    """
    registry = registry or default_registry()
    spec = registry.chain(chain) if isinstance(chain, str) else chain
    runner = ChainRun(spec, Path(run_dir), registry=registry, compare_scratch=compare_scratch, overrides=overrides, choices=choices)
    record = runner.open(resume=resume)
    previous: str | None = None
    for index, step in enumerate(spec.steps):
        entry = record["steps"][index]
        if entry["status"] != "finished":
            interrupted = entry["status"] == "running"
            entry["status"] = "running"
            runner.save(record)
            log.info("chain '%s' step %d/%d: %s on %s", spec.name, index + 1, len(spec.steps), step.name, step.data)
            start = previous or spec.model
            if entry.get("transfer") is None:
                entry["transfer"] = runner.run_arm(index, step, model=start, pretrained=spec.pretrained, fresh=False, resume=interrupted)
                runner.save(record)
                interrupted = False
            if _compares(step, compare_scratch) and entry.get("fresh") is None:
                if index == 0 and _scratch_is_start(spec):
                    entry["fresh"] = {**entry["transfer"], "same_as_transfer": True}
                else:
                    fresh_pretrained = spec.pretrained and spec.scratch is ScratchStart.START
                    folder_exists = (runner.path / step_folder(index, step, fresh=True)).exists()
                    entry["fresh"] = runner.run_arm(index, step, model=spec.model, pretrained=fresh_pretrained, fresh=True, resume=folder_exists)
            entry["status"] = "finished"
            runner.save(record)
            if on_step is not None:
                on_step(entry)
        previous = str(runner.path / entry["transfer"]["checkpoint"])
    record["status"] = "finished"
    runner.save(record)
    return record


# --- the table -------------------------------------------------------------------------------------


def _cell(arm: Mapping[str, Any] | None, threshold: float | None) -> str:
    if not arm:
        return "—"
    if arm.get("same_as_transfer"):
        return "(same run: the chain starts here)"
    best = arm.get("best")
    text = "—" if best is None else f"{best:.3f}"
    if threshold is not None:
        reached = arm.get("epochs_to_threshold")
        text += f" ({'never' if reached is None else f'epoch {reached}'})"
    return text


def chain_table(record: Mapping[str, Any]) -> list[str]:
    """Seed 003's table: per step, its data and the metric with and without transfer."""
    metric, threshold = record.get("metric", "accuracy"), record.get("threshold")
    reach = f", first epoch ≥ {threshold:g}" if threshold is not None else ""
    fresh_from = "the chain's start" if record.get("scratch") == "start" else "random initialisation"
    header = ["step", "data", "classes", "images", f"with transfer (best {metric}{reach})", f"fresh, from {fresh_from}"]
    rows = [header]
    for step in record["steps"]:
        images = step["images"]["train"] + step["images"]["val"]
        rows.append([
            f"{step['index']} {step['name']}", step["data"], str(step["classes"]), str(images),
            _cell(step.get("transfer"), threshold) if step["status"] == "finished" or step.get("transfer") else step["status"],
            _cell(step.get("fresh"), threshold) if record.get("compare_scratch") or step.get("fresh") else "not compared",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
