"""``zoo demo``: the table, the curves and what to try next."""

from __future__ import annotations

import logging
from typing import Any

from .common import print_json, table


def cmd_demo(args: Any) -> int:
    from ..demo import run_demo

    if not args.json:
        logging.getLogger("zoo_core.demo").setLevel(logging.INFO)
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
