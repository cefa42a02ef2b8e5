"""``zoo demo``: the table, the curves and what to try next."""

from __future__ import annotations

import logging
from typing import Any

from .common import print_json, registry_for, table


def cmd_demo(args: Any) -> int:
    if not args.json:  # the phases, and one line per epoch: minutes of pretraining are never silent
        for name in ("zoo_core.demo", "zoo_core.engine"):
            logging.getLogger(name).setLevel(logging.INFO)
    if args.task != "classification":
        return _task_demo(args)
    from ..demo import run_demo

    args.out = args.out or "zoo-demo"
    summary = run_demo(args.out, quick=args.quick, seed=args.seed)
    if args.json:
        print_json(summary)
        return 0
    target = summary["target_accuracy"]
    rows = []
    for arm in summary["arms"]:
        reached = arm["epochs_to_target"]
        rows.append((arm["arm"], f"{arm['accuracy']:.1%}", f"{arm['best_accuracy']:.1%}", reached if reached else "not reached", arm["epochs"], f"{arm['seconds']:.1f}s"))
    print()
    epochs = summary["arms"][0]["epochs"]
    print(f"digits 5-9 with {summary['shots_per_class']} labelled images per class: {summary['model']}, {epochs} epochs per arm")
    print(table(rows, ("ARM", "VAL ACCURACY", "BEST", f"EPOCHS TO {target:.0%}", "EPOCHS", "WALL TIME")))
    print()
    print(f"pretraining on digits 0-4: {summary['pretrain']['accuracy']:.1%} val accuracy in {summary['pretrain']['seconds']:.1f}s")
    print(f"table and curves: {args.out}/demo.json" + (f", {summary['plot']}" if summary.get("plot") else ""))
    print(f"the pretrained model is now a name: zoo --registry {summary['catalog']} info {summary['alias']}")
    return 0


def _task_demo(args: Any) -> int:
    """A task plugin's own demo (``task.demo(out, quick=, seed=)``): detection's tree crowns."""
    from ..errors import ZooError

    task = registry_for(args).task(args.task)
    demo = getattr(task, "demo", None)
    if not callable(demo):
        raise ZooError(f"task '{args.task}' has no demo; try `zoo demo` or `zoo demo detection`")
    args.out = args.out or f"zoo-demo-{args.task}"
    summary = demo(args.out, quick=args.quick, seed=args.seed)
    if args.json:
        print_json(summary)
        return 0
    rows = [
        (arm["arm"], f"{arm['map']:.3f}", f"{arm['map_50']:.3f}", f"{arm['best_map']:.3f} (epoch {arm['best_epoch']})", f"{arm['f1']:.3f}", arm["epochs"], f"{arm['seconds']:.1f}s")
        for arm in summary["arms"]
    ]  # fmt: skip
    print()
    print(f"{summary['data']['target']}: {summary['model']}, pretrained on {summary['data']['pretrain']} (map {summary['pretrain']['map']:.3f})")
    print(table(rows, ("ARM", "MAP", "MAP_50", "BEST MAP", "F1", "EPOCHS", "WALL TIME")))
    print()
    print(f"table and curves: {args.out}/demo.json" + (f", {summary['plot']}" if summary.get("plot") else ""))
    print(f"predict on new images: zoo --registry {summary['catalog']} predict {summary['arms'][0]['run_dir']}/checkpoints/best.pt IMAGE... -o boxes/")
    return 0
