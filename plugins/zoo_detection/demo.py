"""``zoo demo detection``: seed 001's pipeline on real aerial images of tree crowns.

1. Pretrain a small FCOS (timm resnet10t, FPN) on a multi-class set: scenes composed from the
   bundled real handwritten digits (ten classes; the arrangement is composed, the digits real).
2. Fine-tune it on one class, ``Tree``, with ``lightweight-3stage`` (heads, then neck and heads,
   then everything, each group at its own rate): the bundled DeepForest tiles.
3. Train the same detector from scratch on the same tree images for the same number of epochs.

The table compares mAP and map_50 on the held-out plots; ``curves.png`` shows both runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import attrs

from zoo_core.demo import plot_arms, prepare_output
from zoo_core.engine.api import finetune
from zoo_core.fileio import atomic_write_json, atomic_write_text
from zoo_core.registry import Registry

from .scenes import write_digit_scenes

log = logging.getLogger("zoo_core.demo")

TREES = Path(__file__).parent / "data" / "trees"
CATALOG = """# written by `zoo demo detection`
[families.lightweight]
builder = "zoo_detection.model:build_detector"
description = "a small FCOS for CPUs: timm resnet10t, a 64-channel FPN, two convolutions per branch"

[families.lightweight.tiers.t1]
rank = 0
backbone = "timm:resnet10t"
neck = { kind = "fpn", out_channels = 64 }
heads = { detect = { kind = "fcos", num_convs = 2 } }
"""
MODEL = "lightweight/t1"


@attrs.frozen
class DetectionDemoSettings:
    image_size: int = 128
    scenes: int = 240  # composed digit scenes for pretraining (and a fifth as many for its validation)
    pretrain_epochs: int = 15
    stage_epochs: tuple[int, int, int] = (5, 5, 20)
    batch: int = 8
    stage_lrs: tuple[str, ...] = ("stages.0.lr.head=4e-3", "stages.1.lr.head=2e-3", "stages.1.lr.neck=1e-3",
                                  "stages.2.lr.head=1e-3", "stages.2.lr.neck=5e-4", "stages.2.lr.backbone=2e-4")  # fmt: skip
    scratch_lr: float = 2e-3


FULL = DetectionDemoSettings()
QUICK = DetectionDemoSettings(scenes=48, pretrain_epochs=2, stage_epochs=(1, 1, 1))


def _arm(name: str, result: Any, seconds: float) -> dict[str, Any]:
    history = result.history
    best = max(history, key=lambda row: row["map"])
    return {
        "arm": name,
        "map": history[-1]["map"],
        "map_50": history[-1]["map_50"],
        "best_map": best["map"],
        "best_map_50": best["map_50"],
        "best_epoch": best["epoch"],
        "f1": history[-1]["f1"],
        "epochs": len(history),
        "seconds": round(seconds, 2),
        "run_dir": str(result.run_dir),
        "curve": [{"epoch": row["epoch"], "stage": row["stage"], "map": row["map"], "map_50": row["map_50"], "val_loss": row["val_loss"]} for row in history],
    }


def run_detection_demo(out: Path | str = "zoo-demo-detection", *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Pretrain, transfer and train from scratch; write ``demo.json`` (and ``curves.png``); return the summary."""
    settings = QUICK if quick else FULL
    out = Path(out)
    prepare_output(out, "zoo demo detection")
    catalog = out / "zoo.toml"
    atomic_write_text(catalog, CATALOG)
    registry = Registry.load([catalog])
    scenes = out / "data" / "digit-scenes"
    size = settings.image_size
    write_digit_scenes(scenes / "train", settings.scenes, seed=seed, size=size, digit=size // 4, most=4)
    write_digit_scenes(scenes / "val", max(8, settings.scenes // 5), seed=seed + 1, size=size, digit=size // 4, most=4)
    common = {"image_size": size, "seed": seed, "registry": registry}

    def run(recipe: str, model: str, data: Path, name: str, **choices: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        result = finetune(recipe, model, data, run_dir=out / "runs" / name, task="detection", **common, **choices)
        return result, time.perf_counter() - started

    log.info("1/3 pretraining %s on %d composed scenes of real digits (10 classes)", MODEL, settings.scenes)
    pretrain, pretrain_seconds = run(
        "from-scratch", MODEL, scenes, "pretrain", pretrained=False,
        overrides=[f"stages.0.epochs={settings.pretrain_epochs}", f"batch_size={2 * settings.batch}", "stages.0.lr=2e-3", "stages.0.grad_clip=5.0"],
    )  # fmt: skip

    log.info("2/3 fine-tuning it on one class, Tree, with lightweight-3stage")
    stage_overrides = [f"stages.{i}.epochs={epochs}" for i, epochs in enumerate(settings.stage_epochs)]
    transfer, transfer_seconds = run(
        "lightweight-3stage", str(pretrain.best_checkpoint), TREES, "transfer",
        overrides=[*stage_overrides, f"batch_size={settings.batch}", *settings.stage_lrs, "stages.2.ema=0"],
    )  # fmt: skip

    log.info("3/3 training %s from scratch on the same tree images", MODEL)
    scratch, scratch_seconds = run(
        "from-scratch", MODEL, TREES, "scratch", pretrained=False,
        overrides=[f"stages.0.epochs={sum(settings.stage_epochs)}", f"batch_size={settings.batch}", f"stages.0.lr={settings.scratch_lr}", "stages.0.grad_clip=5.0"],
    )  # fmt: skip

    summary = {
        "model": MODEL,
        "catalog": str(catalog),
        "data": {"pretrain": "digit scenes (composed from real digits)", "target": "DeepForest tree crowns (real)", "target_folder": str(TREES)},
        "quick": quick,
        "pretrain": {"seconds": round(pretrain_seconds, 2), "best_checkpoint": str(pretrain.best_checkpoint), "map": pretrain.final["map"], "map_50": pretrain.final["map_50"]},
        "arms": [_arm("transfer", transfer, transfer_seconds), _arm("scratch", scratch, scratch_seconds)],
        "plot": plot_arms(out, transfer, scratch),
    }
    atomic_write_json(out / "demo.json", summary)
    return summary
