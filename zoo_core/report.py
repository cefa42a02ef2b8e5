"""A run folder read back as what it did and whether it passes MultiGridDet's validation checklist.

Seed 002's guide ends with "after training, verify": validation loss below where it started,
objectness and class losses within ±20% of the pretrained values, no NaN or infinite losses.
:func:`build_report` answers those from the files a run writes (``run.json``, ``recipe.json``,
``groups.json``, ``baseline.json``, ``metrics.jsonl``), for any task and for a run that was
interrupted, without loading a checkpoint. Each check is ``passed`` ``True``/``False``, or
``None`` for a line that informs (an early stop, a stage nothing watched).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .catalog import Where, recipe_from_mapping
from .errors import ZooError
from .paths import display
from .plot import read_history
from .specs import DriftWatch, MonitorMode, Recipe, Stage, to_plain

# the starting weights' validation losses, which the engine writes before the first step; named
# here, where reading a run folder stays free of torch, and imported by the run folder's writer
BASELINE_FILE = "baseline.json"
FAILURE_FILE = "failed.json"  # what stopped a run with an error, once it had a checkpoint


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ZooError(
            f"{display(path)}: not valid JSON ({exc.msg}, line {exc.lineno}); the run folder is damaged"
        ) from None


def read_recipe(run_dir: Path) -> Recipe:
    """The recipe the run used, ``--set`` overrides applied, from its ``recipe.json``."""
    data = read_json(run_dir / "recipe.json")
    if not isinstance(data, Mapping):
        raise ZooError(f"{display(run_dir)}: no recipe.json; is this a run folder written by `zoo finetune`?")
    data = dict(data)
    return recipe_from_mapping(str(data.pop("name", "recipe")), data, Where(display(run_dir / "recipe.json")))


def watched_components(stage: Stage, baseline: Mapping[str, float]) -> list[str]:
    """The ``drift/…`` names a stage's drift guard watches: its components, or every loss it has."""
    if stage.drift_guard is None:
        return []
    if stage.drift_guard.components:
        return [name.removeprefix("val_") for name in stage.drift_guard.components]
    return [key.removeprefix("val_") for key in baseline if key.startswith("val_")]


def _outside(ratio: float, band: float, watch: DriftWatch) -> bool:
    return ratio > 1 + band or (watch is DriftWatch.BOTH and ratio < 1 - band)


def _finite(row: Mapping[str, Any]) -> bool:
    return all(math.isfinite(value) for key, value in row.items() if "loss" in key and isinstance(value, float))


def _stage_rows(history: Sequence[Mapping[str, Any]], index: int) -> list[Mapping[str, Any]]:
    return [row for row in history if row["stage"] == index]


def _stage_summary(
    index: int, stage: Stage, rows: Sequence[Mapping[str, Any]], groups: Sequence[str], status: str
) -> dict[str, Any]:
    trained = {name for row in rows for name in row.get("trainable", ())}
    if not rows:
        end = "not reached"
    elif "stop" in rows[-1]:
        end = f"{rows[-1]['stop']['reason']}: {rows[-1]['stop']['detail']}"
    elif len(rows) == stage.epochs:
        end = "completed"
    else:
        end = f"interrupted after {len(rows)} epochs" if status == "interrupted" else "ended"
    return {
        "index": index,
        "name": stage.name,
        "epochs": stage.epochs,
        "epochs_run": len(rows),
        "lr": to_plain(stage.lr),
        "lr_by_group": {key.removeprefix("lr/"): value for key, value in rows[0].items() if key.startswith("lr/")}
        if rows
        else {},
        "frozen": [name for name in groups if name not in trained] if rows else None,
        "augment": dict(stage.augment),
        "loss_scales": dict(stage.loss_scales),
        "loss_norm": list(stage.loss_norm),
        "end": end,
    }


def best_epoch(history: Sequence[Mapping[str, Any]], monitor: tuple[str, str] | None) -> dict[str, Any] | None:
    """The epoch whose ``monitor`` (metric, mode) was best: metric, value, epoch (from 1) and stage."""
    if monitor is None:
        return None
    metric, mode = monitor[0], MonitorMode(monitor[1])
    best = None
    for row in history:
        if metric in row and (best is None or mode.improves(row[metric], best["value"])):
            best = {"metric": metric, "value": row[metric], "epoch": row["epoch"], "stage": row["stage"]}
    return best


def run_status(run_dir: Path, recipe: Recipe, history: Sequence[Mapping[str, Any]]) -> str:
    """finished, interrupted, failed, stopped by the drift guard, or not started."""
    status = _status(recipe, history)
    if status in ("interrupted", "not started") and (run_dir / FAILURE_FILE).is_file():
        return "failed"
    return status


def _status(recipe: Recipe, history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return "not started"
    last = history[-1]
    if last.get("stop", {}).get("reason") == "drift guard":
        return "stopped by the drift guard"
    final_stage = len(recipe.stages) - 1
    stage_done = last["epoch_in_stage"] + 1 == last["stage_epochs"] or "stop" in last
    return "finished" if last["stage"] == final_stage and stage_done else "interrupted"


def _component_checks(
    recipe: Recipe, history: Sequence[Mapping[str, Any]], baseline: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One line per watched component: every epoch of every watching stage within its band."""
    checks = []
    watched: dict[str, list[tuple[Mapping[str, Any], Stage]]] = {}
    for index, stage in enumerate(recipe.stages):
        for name in watched_components(stage, baseline):
            watched.setdefault(name, []).extend((row, stage) for row in _stage_rows(history, index))
    if not any(stage.drift_guard for stage in recipe.stages):
        return [{"check": "loss components within the drift band", "passed": None,
                 "detail": "no stage has a drift_guard, so none was watched (the drift/* ratios are still logged)"}]  # fmt: skip
    for name, rows in watched.items():
        stages = sorted({row["stage"] for row, _ in rows})
        bands = sorted({stage.drift_guard.band for _, stage in rows if stage.drift_guard})
        both = any(stage.drift_guard.watch is DriftWatch.BOTH for _, stage in rows if stage.drift_guard)
        band_text = "/".join(f"{'±' if both else '+'}{band:.0%}" for band in bands) or "-"
        where = f"stage{'s' if len(stages) != 1 else ''} {', '.join(map(str, stages))}"
        label = f"{name} within {band_text} of its starting value in {where}"
        ratios = [(row.get(f"drift/{name}"), row, stage) for row, stage in rows if row.get(f"drift/{name}") is not None]
        if not ratios:
            checks.append(
                {"check": label, "passed": None, "detail": "not measured (no epoch of those stages logged it)"}
            )
            continue
        # a guard watching rises (the default) judges the highest ratio; one watching both, the farthest
        worst, worst_row, _ = max(ratios, key=(lambda item: abs(item[0] - 1)) if both else (lambda item: item[0]))
        failing = [
            (ratio, row)
            for ratio, row, stage in ratios
            if _outside(ratio, stage.drift_guard.band, stage.drift_guard.watch)
        ]
        start = baseline.get(f"val_{name}")
        detail = f"{'farthest' if both else 'highest'} {worst - 1:+.0%} at epoch {worst_row['epoch']} ({worst_row.get(f'val_{name}', float('nan')):.4g} vs {start:.4g})"
        if failing:
            detail += f"; outside the band in {len(failing)} of {len(ratios)} epochs, first at epoch {failing[0][1]['epoch']}"
        checks.append({"check": label, "passed": not failing, "detail": detail})
    return checks


def _gradient_checks(history: Sequence[Mapping[str, Any]], failure: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Two lines from the gradient-flow figures: every trained group learned in every epoch, and
    every frozen tensor stayed as it was (a run that stopped because one moved says which)."""
    measured = [row for row in history if "frozen_checked" in row]
    failed_type = (failure or {}).get("type")
    if not measured and failed_type not in ("GroupNotLearningError", "FrozenMovedError"):
        detail = "not measured (the run had --no-gradient-flow, or predates the figures)"
        return [{"check": "every trained group learned", "passed": None, "detail": detail},
                {"check": "frozen groups stayed still", "passed": None, "detail": detail}]  # fmt: skip
    silent = []
    for row in measured:
        for group in row.get("trainable", ()):
            norm, ratio = row.get(f"grad_norm_max/{group}"), row.get(f"update_ratio/{group}")
            if row.get(f"lr/{group}") == 0:  # asked to stand still, as the engine's check allows
                continue
            if norm is not None and (norm == 0 or ratio == 0):
                silent.append(f"{group} at epoch {row['epoch']} (stage {row['stage']})")
    if failure is not None and failed_type == "GroupNotLearningError":  # the run stopped on it (--strict-groups)
        silent.append(str(failure.get("error", "")))
    trained = {}
    for row in measured:
        trained.setdefault(row["stage"], [group for group in row.get("trainable", ()) if f"grad_norm/{group}" in row])
    learned_detail = "; ".join(f"stage {stage}: {', '.join(groups) or 'none'}" for stage, groups in sorted(trained.items()))
    checks = [{
        "check": "every trained group learned (gradient and weight change above zero each epoch)",
        "passed": not silent,
        "detail": f"no gradient or no change: {'; '.join(silent[:5])}" if silent else learned_detail,
    }]  # fmt: skip
    if failure is not None and failed_type == "FrozenMovedError":
        checks.append({"check": "frozen groups stayed still", "passed": False, "detail": str(failure.get("error", ""))})
    elif measured:
        counts = sorted({row["frozen_checked"] for row in measured})
        tensors = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        checks.append({
            "check": "frozen groups stayed still",
            "passed": True,
            "detail": f"frozen weights and BatchNorm statistics checked unchanged after each of {len(measured)} epochs ({tensors} tensors)"
                      if counts[-1] else f"nothing was frozen in its {len(measured)} epoch{'s' if len(measured) != 1 else ''}",
        })  # fmt: skip
    return checks


def build_report(run_dir: Path | str, *, monitor_for: Callable[[str], tuple[str, str]] | None = None) -> dict[str, Any]:
    """What the run in ``run_dir`` did and its checklist; ``monitor_for(task)`` gives the run's task's
    (metric, mode) that "best" follows (none: no best is reported)."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / "run.json")
    if not isinstance(record, Mapping):
        raise ZooError(f"{display(run_dir)}: no run.json; is this a run folder written by `zoo finetune`?")
    recipe = read_recipe(run_dir)
    history = read_history(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    baseline = read_json(run_dir / BASELINE_FILE) or {}
    groups = [group["name"] for group in (read_json(run_dir / "groups.json") or [])]
    status = run_status(run_dir, recipe, history)
    stages = [
        _stage_summary(i, stage, _stage_rows(history, i), groups, status) for i, stage in enumerate(recipe.stages)
    ]
    monitor = monitor_for(record["task"]) if monitor_for is not None and record.get("task") else None
    best = best_epoch(history, monitor)
    final = history[-1] if history else None
    checks: list[dict[str, Any]] = []
    if final is not None:
        start = baseline.get("val_loss")
        if start is None:
            checks.append(
                {
                    "check": "validation loss below the starting model's",
                    "passed": None,
                    "detail": "not measured (no baseline.json)",
                }
            )
        else:
            change = final["val_loss"] / start - 1 if start else float("nan")
            checks.append({
                "check": "validation loss below the starting model's",
                "passed": bool(final["val_loss"] < start),
                "detail": f"{final['val_loss']:.4g} at epoch {final['epoch']} vs {start:.4g} before training ({change:+.0%})",
            })  # fmt: skip
        if "random_val_loss" in baseline:
            checks.append({
                "check": "validation loss below a random initialisation's",
                "passed": bool(final["val_loss"] < baseline["random_val_loss"]),
                "detail": f"{final['val_loss']:.4g} vs {baseline['random_val_loss']:.4g}",
            })  # fmt: skip
        checks += _component_checks(recipe, history, baseline)
        skipped = int(final.get("skipped_steps", 0))
        bad_rows = [row["epoch"] for row in history if not _finite(row)]
        detail = f"{skipped} step{'s' if skipped != 1 else ''} skipped for a non-finite loss"
        if bad_rows:
            detail += f"; non-finite epoch losses at epoch {', '.join(map(str, bad_rows[:5]))}"
        checks.append(
            {"check": "no non-finite loss or skipped step", "passed": skipped == 0 and not bad_rows, "detail": detail}
        )
        checks += _gradient_checks(history, read_json(run_dir / FAILURE_FILE))
        for row in history:
            stop = row.get("stop")
            if stop:
                stage = recipe.stages[row["stage"]]
                checks.append({
                    "check": f"stage {row['stage']} ({stage.name or '-'}) stopped by {stop['reason']} after "
                             f"{row['epoch_in_stage'] + 1} of {stage.epochs} epochs",
                    "passed": None if stop["reason"] == "early stopping" else False,
                    "detail": stop["detail"],
                })  # fmt: skip
    if status == "interrupted":
        checks.append({"check": "run finished", "passed": None,
                       "detail": f"interrupted after {len(history)} of {recipe.total_epochs} epochs; continue it with `zoo finetune ... --resume`"})  # fmt: skip
    components = {}
    for key, start in baseline.items():
        if key.startswith("val_") and final is not None and key in final:
            components[key.removeprefix("val_")] = {
                "start": start,
                "final": final[key],
                "ratio": final[key] / start if start else None,
            }
    return {
        "run": str(run_dir),
        "model": record.get("model"),
        "architecture": record.get("architecture", record.get("model")),
        "task": record.get("task"),
        "data": record.get("data"),
        "recipe": recipe.name,
        "status": status,
        "epochs_run": len(history),
        "epochs": recipe.total_epochs,
        "stages": stages,
        "best": best,
        "final": {key: value for key, value in final.items() if isinstance(value, (int, float)) and "/" not in key}
        if final
        else None,
        "components": components,
        "checks": checks,
        "passed": all(check["passed"] is not False for check in checks),
    }
