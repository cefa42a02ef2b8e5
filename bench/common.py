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
