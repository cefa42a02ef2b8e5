"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title} ==")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def engine_epoch_seed(seed: int, epoch: int) -> int:
    """The seed the engine derives for ``epoch`` of a run seeded ``seed`` (``Engine._epoch_seed``)."""
    return (seed * 1_000_003 + epoch) % 2**31


def engine_epoch_loader(dataset, *, batch: int, collate, seed: int, epoch: int):
    """A hand loop's loader for ``epoch`` in the engine's data order: every RNG seeded as the engine seeds it."""
    import random

    import numpy as np
    import torch

    random.seed(engine_epoch_seed(seed, epoch))
    np.random.seed(engine_epoch_seed(seed, epoch))
    torch.manual_seed(engine_epoch_seed(seed, epoch))
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate)


def write_jpeg_folder(root, *, classes: int, per_class: int, size: tuple[int, int], val_per_class: int = 0, seed: int = 0):
    """``root/train/classK/*.jpg`` (and ``root/val/`` when ``val_per_class``): a colour and stripe
    direction per class, plus noise; synthetic, for measuring the data path, not for accuracy claims."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    for part, count in (("train", per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(40, 220, 3)
            stripes = ((np.arange(width if label % 2 else height) // 8) % 2).astype(np.float32)
            pattern = stripes[None, :, None] if label % 2 else stripes[:, None, None]
            for index in range(count):
                noise = rng.normal(0, 30, (height, width, 3))
                pixels = np.clip(colour * (0.6 + 0.4 * pattern) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return root


def peak_rss(command: list[str], *, env: dict | None = None, interval: float = 0.05) -> tuple[int, float, int]:
    """Run ``command``; return (exit status, seconds, peak resident memory in bytes of it and its children together).

    Sampled from ``/proc`` (Linux) every ``interval`` seconds: DataLoader workers are children,
    and their memory counts.
    """
    import os
    import subprocess
    from pathlib import Path

    def tree_rss(pid: int) -> int:
        total, pending = 0, [pid]
        while pending:
            current = pending.pop()
            try:
                status = Path(f"/proc/{current}/status").read_text()
                children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            except OSError:
                continue
            total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            pending += [int(child) for child in children]
        return total

    import tempfile

    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=errors)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            time.sleep(interval)
        seconds = time.perf_counter() - started
        if process.returncode:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{errors.read().decode()[-2000:]}")
    return process.returncode, seconds, peak


def write_image_folder(root, classes: int = 3, per_class: int = 12, size: int = 16, *, seed: int = 0):
    """Small, learnable PNGs in ``root/train`` and ``root/val``: a colour and stripe direction per
    class, plus noise. The benchmarks' own (the test suite's ``conftest`` needs pytest)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
    for part, count in (("train", per_class), ("val", max(2, per_class // 3))):
        for label in range(classes):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                base = np.zeros((size, size, 3), dtype=np.float32)
                base[:] = palette[label % len(palette)]
                stripes = (np.arange(size) // 2) % 2
                pattern = stripes[:, None] if label % 2 else stripes[None, :]
                base *= 0.6 + 0.4 * pattern[..., None]
                base += rng.normal(0, 25, base.shape)
                Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root
