"""``zoo report``: a run's stages, metrics and checklist (:mod:`zoo_core.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ZooError
from ..paths import display
from ..report import build_report
from ..sizes import format_size
from .common import print_json, registry_for, table

MARKS = {True: "PASS", False: "FAIL", None: "INFO"}


def _lr(stage: dict[str, Any]) -> str:
    rates = {group: rate for group, rate in stage["lr_by_group"].items() if rate}  # frozen groups have rate 0
    if rates and len(set(rates.values())) == 1:
        return f"{next(iter(rates.values())):g}"
    if rates:
        return ", ".join(f"{group}={rate:g}" for group, rate in rates.items())
    lr = stage["lr"]
    return f"{lr:g}" if isinstance(lr, (int, float)) else str(lr)


def _augment(stage: dict[str, Any]) -> str:
    return (
        ", ".join(
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in stage["augment"].items()
        )
        or "-"
    )


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"run     {report['run']}: {report['status']}, {report['epochs_run']} of {report['epochs']} epochs",
        f"model   {report['architecture']}"
        + (f" (from {report['model']})" if report["model"] != report["architecture"] else ""),
        f"task    {report['task']}, recipe {report['recipe']}, data {report['data']}",
        "",
    ]
    rows = []
    for stage in report["stages"]:
        frozen = "-" if stage["frozen"] is None else ", ".join(stage["frozen"]) or "none"
        epochs = f"{stage['epochs_run']}/{stage['epochs']}"
        rows.append((stage["index"], stage["name"] or "-", epochs, _lr(stage), frozen, _augment(stage), stage["end"]))
    lines.append(table(rows, ("#", "STAGE", "EPOCHS", "LR", "FROZEN", "AUGMENT", "END")))
    lines.append("")
    if report["best"]:
        best = report["best"]
        lines.append(f"best    {best['metric']} {best['value']:.4f} (epoch {best['epoch']}, stage {best['stage']})")
    if report["final"]:
        final = report["final"]
        shown = [key for key in ("accuracy", "map", "map_50", "f1", "f1_macro", "val_loss") if key in final]
        lines.append(
            "final   " + "  ".join(f"{key} {final[key]:.4f}" for key in shown) + f" (epoch {final['epoch']})"
        )
    if report["components"]:
        lines += ["", table(
            [(name, f"{c['start']:.4g}", f"{c['final']:.4g}", "-" if c["ratio"] is None else f"{c['ratio']:.2f}")
             for name, c in report["components"].items()],
            ("VAL LOSS", "START", "FINAL", "RATIO"),
        )]  # fmt: skip
    lines += ["", "checks"]
    lines += [f"  {MARKS[check['passed']]}  {check['check']}: {check['detail']}" for check in report["checks"]]
    if not report["checks"]:
        lines.append("  (no epoch finished yet)")
    return "\n".join(lines)


def cmd_report(args: Any) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ZooError(f"{display(run_dir)}: no such run folder; give the --run-dir of a `zoo finetune` run")
    registry = registry_for(args)
    report = build_report(run_dir, monitor_for=lambda task: registry.task(task).monitor)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0 if report["passed"] else 1



def cmd_runs(args: Any) -> int:
    from ..runs import clean, list_runs, removable

    registry = registry_for(args)
    runs = list_runs(Path(args.dir), monitor_for=lambda task: registry.task(task).monitor)
    freed: dict[Path, int] = {}
    if args.clean:
        freed = {run.path: clean(run) for run in runs if removable(run)}
        runs = list_runs(Path(args.dir), monitor_for=lambda task: registry.task(task).monitor)
    if args.json:
        print_json([{**run.to_dict(), **({"freed": freed[run.path]} if run.path in freed else {})} for run in runs])
        return 0
    if not runs:
        print(f"no run folders under {display(Path(args.dir))}")
        return 0
    rows = []
    for run in runs:
        best = f"{run.best['metric']} {run.best['value']:.4f} (epoch {run.best['epoch']})" if run.best else "-"
        rows.append((display(run.path), run.model, run.recipe, run.status, f"{run.epochs_run}/{run.epochs}", best, format_size(run.size)))
    print(table(rows, ("RUN", "MODEL", "RECIPE", "STATUS", "EPOCHS", "BEST", "SIZE")))
    for run in runs:
        if run.error:
            print(f"{display(run.path)} failed: {run.error}")
    if args.clean:
        print(f"cleaned {len(freed)} finished runs, {format_size(sum(freed.values()))} freed" if freed else "nothing to clean")
    return 0
