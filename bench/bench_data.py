"""The data path, measured side by side in one run:

1. Peak memory (the run and its DataLoader workers together) of a one-epoch ``zoo finetune`` over
   1,000 against 8,000 images of the same size: goal ratio <= 1.2 (memory does not grow with
   the data).
2. Images per second of Zoo's data path (the classification task's dataset through the engine's
   loader) against torchvision's ``ImageFolder`` + ``DataLoader`` with the same workers and the
   same eval transforms (timm's: resize the shorter side by crop_pct, centre crop, normalise):
   goal >= 1.0x.
3. A head-only stage over cached features spilled to disk (``--cache-budget 0``) against the same
   stage with them in memory: goal <= 1.3x the time, and identical weights.

The images are synthetic JPEGs (a colour and stripes per class, plus noise) at ImageNet's typical
size: what is measured is memory and throughput, not accuracy. Run from the repository root:

    .venv/bin/python bench/bench_data.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, median, peak_rss, report, write_jpeg_folder

from zoo_core.engine.loading import batches, default_workers, make_loader

logging.basicConfig(level=logging.WARNING)
IMAGE = (500, 375)  # ImageNet's most common size
RUN_SIZE, LOADER_SIZE = 64, 224


def zoo(*argv: object) -> list[str]:
    return [sys.executable, "-m", "zoo_core", *map(str, argv)]


def memory(root: Path) -> list[tuple[str, str]]:
    peaks = {}
    for count in (1_000, 8_000):
        data = write_jpeg_folder(root / f"data-{count}", classes=4, per_class=count // 4, val_per_class=25, size=(160, 120))
        _, seconds, peak = peak_rss(zoo(
            "finetune", "--recipe", "full-finetune", "--model", "timm:test_resnet", "--no-pretrained", "--image-size", RUN_SIZE,
            "--data", data, "--run-dir", root / f"run-{count}", "--set", "stages.0.epochs=1", "--set", "batch_size=64",
        ))  # fmt: skip
        peaks[count] = peak
        print(f"  {count:>5} images: peak {peak / 1e6:.0f} MB, {seconds:.1f} s", flush=True)
    return [
        ("peak memory, 1,000 images", f"{peaks[1_000] / 1e6:.0f} MB"),
        ("peak memory, 8,000 images", f"{peaks[8_000] / 1e6:.0f} MB"),
        ("ratio 8,000 / 1,000 (goal <= 1.2)", f"{peaks[8_000] / peaks[1_000]:.2f}"),
    ]


def throughput(root: Path) -> list[tuple[str, str]]:
    from torchvision import datasets
    from torchvision.transforms import v2
    from zoo_classification.task import ClassificationTask

    from zoo_core.specs import InputConfig

    data = write_jpeg_folder(root / "loader", classes=4, per_class=250, size=IMAGE, seed=1)
    config = InputConfig(size=LOADER_SIZE)  # resnet's: crop_pct 0.875, bilinear, ImageNet mean and std
    workers = max(default_workers(), 1)
    task = ClassificationTask()
    task_data = task.load_data(data / "train", seed=0, val_fraction=0.2)
    everything = task_data.train + task_data.val
    ours = task.dataset(type(task_data)(task_data.root, task_data.class_names, everything, everything, ""), "val", input_config=config, augment={})
    zoo_loader = make_loader(
        ours, collate=task.collate, batch_size=64, sampler=torch.utils.data.SequentialSampler(ours), seed=0, workers=workers,
        pin_memory=False, persistent=False,
    )  # fmt: skip
    timm_eval = v2.Compose([
        v2.Resize(config.resize_size, interpolation=v2.InterpolationMode.BILINEAR), v2.CenterCrop(config.size), v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config.mean), list(config.std)),
    ])  # fmt: skip
    folder = datasets.ImageFolder(str(data / "train"), transform=timm_eval)
    torchvision_loader = torch.utils.data.DataLoader(folder, batch_size=64, shuffle=False, num_workers=workers)

    def images_per_second(loader, unpack) -> float:
        started, count = time.perf_counter(), 0
        for batch in loader:
            count += unpack(batch)
        return count / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"zoo": [], "torchvision": []}
    for _ in range(3):  # alternating, so both see the same page cache and machine load
        rates["zoo"].append(images_per_second(batches(zoo_loader), lambda batch: len(batch)))
        rates["torchvision"].append(images_per_second(torchvision_loader, lambda batch: len(batch[1])))
    zoo_rate, tv_rate = median(rates["zoo"]), median(rates["torchvision"])
    return [
        (f"workers, images ({IMAGE[0]}x{IMAGE[1]} JPEG -> {LOADER_SIZE})", f"{workers}, {len(folder)}"),
        ("Zoo data path", f"{zoo_rate:.0f} images/s"),
        ("torchvision ImageFolder + DataLoader", f"{tv_rate:.0f} images/s"),
        ("ratio Zoo / torchvision (goal >= 1.0)", f"{zoo_rate / tv_rate:.2f}"),
    ]


def spilled_cache(root: Path) -> list[tuple[str, str]]:
    from zoo_core.engine.api import finetune

    data = write_jpeg_folder(root / "probe", classes=4, per_class=500, val_per_class=50, size=(160, 120), seed=2)
    seconds, weights = {}, {}
    common = {"model": "timm:resnet10t", "pretrained": False, "image_size": 96, "overrides": ("stages.0.epochs=5", "batch_size=64")}
    for name, budget in (("memory", None), ("disk", 0), ("memory again", None), ("disk again", 0)):
        started = time.perf_counter()
        result = finetune("linear-probe", data=data, run_dir=root / f"probe-{name.replace(' ', '-')}", cache_budget=budget, **common)
        seconds.setdefault(name.split()[0], []).append(time.perf_counter() - started)
        weights[name.split()[0]] = torch.load(result.last_checkpoint, weights_only=True)["model_state_dict"]
    same = all(torch.equal(weights["memory"][key], weights["disk"][key]) for key in weights["memory"])
    memory_s, disk_s = median(seconds["memory"]), median(seconds["disk"])
    return [
        ("head-only, 5 epochs, 2,000 images: features in memory", f"{memory_s:.1f} s"),
        ("the same, features spilled to disk (--cache-budget 0)", f"{disk_s:.1f} s"),
        ("ratio disk / memory (goal <= 1.3)", f"{disk_s / memory_s:.2f}"),
        ("final weights identical", "yes" if same else "NO"),
    ]


def main() -> None:
    print(f"bench_data on {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ.setdefault("ZOO_HOME", str(root / "zoo-home"))
        report("throughput: Zoo's data path against torchvision's", throughput(root))
        report("feature cache: spilled to disk against in memory", spilled_cache(root))
        report("peak memory of a one-epoch run: 8,000 images against 1,000", memory(root))


if __name__ == "__main__":
    main()
