"""Detection, measured side by side in one run, on the bundled tree crowns (128 px):

1. The engine against a hand-written torchvision detection loop on the same FCOS, data,
   optimizer and steps: median step time ratio (goal <= 1.03) and final weights equal.
2. Zoo's reported COCO mAP against pycocotools' ``COCOeval`` on the same predictions (goal:
   equal to 1e-6). Needs pycocotools: run through ``bench/with-pycocotools``.
3. A 15-epoch heads-only stage with the feature cache against without (goal >= 3x over resnet50,
   torchvision's detection backbone), for a CPU-sized FCOS (64-channel FPN, two convolutions per
   branch); the same over resnet10t and torchvision's default head over resnet10t for reference,
   with the bound each runs into: the cache removes the backbone's share of an epoch, no more.
4. MultiGridDet's grid head (``--detector multigrid``) beside FCOS on the same backbone and FPN:
   median training step time of each; and its heads-only stage with the cache against without
   (goal >= 3x over resnet50, as for FCOS).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import engine_epoch_loader, machine, median, report
from zoo_detection.metrics import DetectionMetrics, detections_in_file_pixels

import zoo_core
from zoo_core.anatomy import input_config
from zoo_core.engine.api import finetune, model_from_checkpoint
from zoo_core.registry import Registry

TREES = Path(__file__).resolve().parent.parent / "plugins" / "zoo_detection" / "data" / "trees"
SIZE, SEED, MODEL = 128, 0, "timm:resnet10t+detector/fcos"
logging.basicConfig(level=logging.WARNING)


class HandLoop:
    """The torchvision detection loop a user would write: ``sum(model(images, targets).values())``."""

    def __init__(self, batch: int, lr: float, weight_decay: float) -> None:
        registry = Registry.load()
        self.task = registry.task("detection")
        loaded = self.task.load_data(TREES, seed=SEED, val_fraction=0.2)
        torch.manual_seed(SEED)  # as the engine seeds before building
        self.model = zoo_core.create_model(MODEL, num_classes=1, registry=registry)
        config = input_config(self.model, registry.plugins.hook, image_size=SIZE)
        self.dataset = self.task.dataset(loaded, "train", input_config=config, augment={})
        self.val_loader = torch.utils.data.DataLoader(self.task.dataset(loaded, "val", input_config=config, augment={}), batch_size=64, collate_fn=self.task.collate)
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True)
        self.batch = batch
        self.epochs_done = 0

    def epoch(self) -> float:
        loader = engine_epoch_loader(self.dataset, batch=self.batch, collate=self.task.collate, seed=SEED, epoch=self.epochs_done)
        self.model.train()
        started, steps = time.perf_counter(), 0
        for batch in loader:
            loss = sum(self.model(batch.images, batch.targets).losses.values())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
            steps += 1
        seconds = (time.perf_counter() - started) / steps
        self.model.eval()
        with torch.no_grad():
            for batch in self.val_loader:
                self.model(batch.images, batch.targets)
        self.epochs_done += 1
        return seconds


def engine_vs_hand_loop(out: Path) -> tuple[list[tuple[str, str]], Path]:
    from zoo_core import hookimpl
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import load_plugins

    epochs, batch, lr, wd = 6, 8, 1e-3, 0.05
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hand = HandLoop(batch, lr, wd)
    hand_steps: list[float] = []

    class Interleave:
        @hookimpl
        def zoo_on_epoch_end(self, run, epoch, metrics):
            hand_steps.append(hand.epoch())

    host = load_plugins()
    host.register(Interleave(), name="bench-interleave")
    overrides = [f"stages.0.epochs={epochs}", "stages.0.schedule=constant", "stages.0.warmup_epochs=0", "stages.0.augment={}",
                 f"stages.0.lr={lr}", f"batch_size={batch}", f"weight_decay={wd}"]  # fmt: skip
    result = finetune("full-finetune", MODEL, TREES, task="detection", run_dir=out / "engine", pretrained=False, image_size=SIZE,
                      overrides=overrides, seed=SEED, use_cache=False, registry=Registry(host, load_catalog()))  # fmt: skip
    torch.set_num_threads(threads)
    engine_steps = [row["train_seconds"] / row["train_steps"] for row in result.history]
    ratios = [e / h for e, h in zip(engine_steps[1:], hand_steps[1:])]
    engine_weights = torch.load(result.last_checkpoint, weights_only=True)["model_state_dict"]
    hand_weights = hand.model.state_dict()
    equal = all(torch.equal(engine_weights[k], hand_weights[k]) for k in hand_weights)
    ratio = median(ratios)
    return [
        ("engine median step (1 thread)", f"{median(engine_steps[1:]) * 1000:.1f} ms"),
        ("hand loop median step (1 thread)", f"{median(hand_steps[1:]) * 1000:.1f} ms"),
        ("engine / hand loop, median of per-epoch ratios (goal <= 1.03)", f"{ratio:.3f}  {'OK' if ratio <= 1.03 else 'MISSED'}"),
        ("final weights equal", str(equal)),
    ], result.last_checkpoint


def map_vs_pycocotools(checkpoint: Path, out: Path) -> list[tuple[str, str]]:
    """The same predictions scored by Zoo (torchmetrics + faster-coco-eval) and by pycocotools."""
    registry = Registry.load()
    model, loaded = model_from_checkpoint(checkpoint, registry=registry)
    model.eval()
    task = registry.task("detection")
    data = task.load_data(TREES, seed=SEED, val_fraction=0.2)
    config = input_config(model, registry.plugins.hook, image_size=SIZE)
    loader = torch.utils.data.DataLoader(task.dataset(data, "val", input_config=config, augment={}), batch_size=16, collate_fn=task.collate)
    metrics = DetectionMetrics()
    results = []
    with torch.no_grad():
        for batch in loader:
            outputs = model(batch.images)
            metrics.update(outputs, batch)
            for image_id, found in zip(batch.image_ids, detections_in_file_pixels(outputs.detections, batch.scales)):
                for (x0, y0, x1, y1), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
                    results.append({"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    zoo_map = metrics.compute()
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        return [("Zoo map / map_50", f"{zoo_map['map']:.6f} / {zoo_map['map_50']:.6f}"),
                ("pycocotools COCOeval", "skipped: run through bench/with-pycocotools")]  # fmt: skip
    (out / "detections.json").write_text(json.dumps(results))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(TREES / "val" / "annotations.json"))
        evaluation = COCOeval(truth, truth.loadRes(str(out / "detections.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    reference = {"map": evaluation.stats[0], "map_50": evaluation.stats[1], "map_75": evaluation.stats[2], "mar_100": evaluation.stats[8]}
    worst = max(abs(zoo_map[key] - value) for key, value in reference.items())
    return [
        (f"{key}: Zoo / pycocotools", f"{zoo_map[key]:.6f} / {value:.6f}") for key, value in reference.items()
    ] + [("largest difference (goal <= 1e-6)", f"{worst:.2e}  {'OK' if worst <= 1e-6 else 'MISSED'}")]


SMALL = """
[families.bench-det]
builder = "zoo_detection.model:build_detector"
[families.bench-det.tiers.small]
rank = 0
backbone = "timm:resnet10t"
neck = { kind = "fpn", out_channels = 64 }
heads = { detect = { kind = "fcos", num_convs = 2 } }
[families.bench-det.tiers.resnet50]
rank = 1
backbone = "timm:resnet50"
neck = { kind = "fpn", out_channels = 64 }
heads = { detect = { kind = "fcos", num_convs = 2 } }
[families.bench-det.tiers.mg-small]
rank = 2
backbone = "timm:resnet10t"
neck = { kind = "fpn", out_channels = 64 }
heads = { detect = { kind = "multigrid", num_convs = 2 } }
[families.bench-det.tiers.mg-resnet50]
rank = 3
backbone = "timm:resnet50"
neck = { kind = "fpn", out_channels = 64 }
heads = { detect = { kind = "multigrid", num_convs = 2 } }
[recipes.bench-all]
task = "detection"
batch_size = 8
[[recipes.bench-all.stages]]
name = "all"
epochs = 4
lr = 1e-4
schedule = "constant"
[recipes.bench-heads]
task = "detection"
batch_size = 8
[[recipes.bench-heads.stages]]
name = "heads"
epochs = 15
train = ["head"]
lr = 1e-3
"""


def cache_vs_no_cache(
    out: Path,
    models: tuple[str, ...] = ("bench-det/resnet50", "bench-det/small", MODEL),
    goal: str = "bench-det/resnet50",
) -> list[tuple[str, str]]:
    """The goal is judged over resnet50 (torchvision's detection backbone); the resnet10t rows show
    the bound the cache runs into there: it removes the backbone's (and frozen neck's) share of an
    epoch, and at most ``uncached epoch / cached epoch`` follows from what is left (Amdahl)."""
    catalog = out / "bench.toml"
    catalog.write_text(SMALL)
    rows = []
    for model in models:
        seconds, weights, epoch = {}, {}, {}
        for cached in (True, False):
            result = finetune("bench-heads", model, TREES, run_dir=out / f"heads-{model.replace('/', '-')}-{cached}", pretrained=False,
                              image_size=SIZE, seed=SEED, use_cache=cached, registry=Registry.load([catalog]))  # fmt: skip
            assert all(row["cached"] == cached for row in result.history)
            seconds[cached] = sum(row["seconds"] + row["cache_seconds"] for row in result.history)
            epoch[cached] = median([row["seconds"] for row in result.history[1:]])
            weights[cached] = torch.load(result.last_checkpoint, weights_only=True)["model_state_dict"]
        speedup = seconds[False] / seconds[True]
        equal = all(torch.equal(weights[True][key], weights[False][key]) for key in weights[False])
        bound = epoch[False] / epoch[True]
        verdict = ("OK" if speedup >= 3 else "MISSED") if model == goal else "reference"
        rows += [
            (f"{model}: cache / no cache", f"{seconds[True]:.1f} s / {seconds[False]:.1f} s"),
            (f"{model}: median epoch cached / not", f"{epoch[True]:.2f} s / {epoch[False]:.2f} s: what is left bounds the speed-up at {bound:.1f}x"),
            (f"{model}: speed-up (goal >= 3x over {goal.rsplit('/', 1)[-1].removeprefix('mg-')})", f"{speedup:.1f}x  {verdict}; final weights equal: {equal}"),
        ]
    return rows


def multigrid_vs_fcos(out: Path) -> list[tuple[str, str]]:
    """Every layer training (no cache), 4 epochs: the grid head's step beside FCOS's, same backbone and FPN."""
    catalog = out / "bench.toml"
    catalog.write_text(SMALL)
    steps = {}
    for model in ("bench-det/small", "bench-det/mg-small"):
        result = finetune("bench-all", model, TREES, run_dir=out / f"all-{model.replace('/', '-')}", pretrained=False, image_size=SIZE,
                          seed=SEED, use_cache=False, registry=Registry.load([catalog]))  # fmt: skip
        steps[model] = median([row["train_seconds"] / row["train_steps"] for row in result.history[1:]])
    ratio = steps["bench-det/mg-small"] / steps["bench-det/small"]
    return [
        ("FCOS median step (resnet10t, 64-channel FPN)", f"{steps['bench-det/small'] * 1000:.0f} ms"),
        ("multigrid median step (same backbone and FPN)", f"{steps['bench-det/mg-small'] * 1000:.0f} ms"),
        ("multigrid / FCOS", f"{ratio:.2f}"),
    ]


def main() -> None:
    if sys.argv[1:] == ["--multigrid-only"]:
        with tempfile.TemporaryDirectory() as folder:
            report("4. the multigrid head: step time beside FCOS, every layer training", multigrid_vs_fcos(Path(folder)))
            report("4. the multigrid head: a 15-epoch heads-only stage with the feature cache vs without",
                   cache_vs_no_cache(Path(folder), ("bench-det/mg-resnet50", "bench-det/mg-small"), goal="bench-det/mg-resnet50"))  # fmt: skip
        return
    if sys.argv[1:] == ["--cache-only"]:
        with tempfile.TemporaryDirectory() as folder:
            report("3. a 15-epoch heads-only stage (lightweight-3stage's first) with the feature cache vs without (cache building included)", cache_vs_no_cache(Path(folder)))
        return
    print(f"bench_detection on {machine()}, torch {torch.__version__}, {MODEL} at {SIZE} px, DeepForest tree crowns")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        rows, checkpoint = engine_vs_hand_loop(out)
        report("1. engine vs a hand-written torchvision detection loop (6 epochs, 9 steps each)", rows)
        report("2. COCO mAP: Zoo vs pycocotools on the same predictions", map_vs_pycocotools(checkpoint, out))
        report("3. a 15-epoch heads-only stage (lightweight-3stage's first) with the feature cache vs without (cache building included)", cache_vs_no_cache(out))
        report("4. the multigrid head: step time beside FCOS, every layer training", multigrid_vs_fcos(out))
        report(
            "4. the multigrid head: a 15-epoch heads-only stage with the feature cache vs without",
            cache_vs_no_cache(out, ("bench-det/mg-resnet50", "bench-det/mg-small"), goal="bench-det/mg-resnet50"),
        )


if __name__ == "__main__":
    sys.exit(main())
