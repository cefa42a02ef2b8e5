"""DataLoaders for a run: worker count, persistent workers, per-item seeds, errors from workers.

Each item is read under its own seed, derived from the epoch's seed and the item's index, and
handed to the worker by the sampler. The random transforms of an epoch are then the same
whichever worker reads an item, however many workers there are, and whether the workers
persist across epochs or not — which is what lets a resumed run replay an epoch exactly while
its workers stay up between epochs.

A ZooError raised in a worker (an unreadable image) comes back to the main process as itself,
with its one-line message; DataLoader would re-raise it with the worker's traceback in the
message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch

from ..errors import ZooError

MAX_DEFAULT_WORKERS = 8


MIN_ITEMS_FOR_WORKERS = 512  # below this, reading in-process costs less than starting workers (~0.2 s each)
MIN_CPUS_FOR_WORKERS = 4  # with fewer per process, workers take the cores training computes on


def default_workers(world_size: int = 1, items: int | None = None) -> int:
    """DataLoader workers per process when the user does not say: the CPUs left per process after
    the training process itself, at most ``MAX_DEFAULT_WORKERS``; none for fewer than
    ``MIN_ITEMS_FOR_WORKERS`` items, or fewer than ``MIN_CPUS_FOR_WORKERS`` CPUs per process
    (measured on two cores: a worker beside the training process made each epoch slower)."""
    if items is not None and items < MIN_ITEMS_FOR_WORKERS:
        return 0
    per_process = (os.cpu_count() or 1) // max(world_size, 1)
    if per_process < MIN_CPUS_FOR_WORKERS:
        return 0
    return min(MAX_DEFAULT_WORKERS, per_process - 1)


def item_seed(epoch_seed: int, index: int) -> int:
    return (epoch_seed * 1_000_003 + index) % 2**63


@attrs.frozen
class ItemFailed:
    """What a worker returns instead of an item that raised a ZooError."""

    error_type: type[ZooError]
    message: str


class SeededItems(torch.utils.data.Dataset):
    """``dataset[index]`` under ``torch.manual_seed(seed)`` for keys ``(index, seed)``; the caller's RNG is left as it was."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # the CPU generator alone (transforms draw from it): torch.manual_seed and fork_rng also visit
        # every accelerator's generator, which costs 40 times as much per item
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        except ZooError as exc:
            return ItemFailed(type(exc), str(exc))
        finally:
            generator.set_state(saved)


class EpochSeeds(torch.utils.data.Sampler):
    """The wrapped sampler's indices, each with its seed for the current epoch (:meth:`set_epoch`)."""

    def __init__(self, sampler: Any, seed: int) -> None:
        self.sampler, self.seed, self.epoch_seed = sampler, seed, seed

    def set_epoch(self, epoch: int, epoch_seed: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch_seed = epoch_seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = self.epoch_seed
        return ((index, item_seed(epoch_seed, index)) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def raising_collate(collate: Callable[[Sequence[Any]], Any]) -> Callable[[Sequence[Any]], Any]:
    """``collate`` that first raises, as itself, the first ZooError an item ran into."""

    def checked(items: Sequence[Any]) -> Any:
        failed = next((item for item in items if isinstance(item, ItemFailed)), None)
        if failed is not None:
            return failed  # raised in the main process: see :func:`batches`
        return collate(items)

    return checked


def batches(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """Iterate ``loader``, raising an item's ZooError in this process with its own message."""
    for batch in loader:
        if isinstance(batch, ItemFailed):
            raise batch.error_type(batch.message)
        yield batch


def make_loader(
    dataset: Any,
    *,
    collate: Callable[[Sequence[Any]], Any],
    batch_size: int,
    sampler: Any,
    seed: int,
    workers: int,
    pin_memory: bool,
    persistent: bool = True,
) -> torch.utils.data.DataLoader:
    """A loader over ``dataset`` whose items carry their seeds; ``loader.sampler.set_epoch`` moves it on.

    Its workers stay up between epochs when ``persistent`` (the loader is iterated again), and
    each prefetches two batches.
    """
    return torch.utils.data.DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=EpochSeeds(sampler, seed),
        collate_fn=raising_collate(collate),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        # its own generator: starting an iterator draws the workers' base seed, which would otherwise
        # come from the global RNG and shift the model's random numbers (dropout, proposal sampling)
        generator=torch.Generator().manual_seed(seed),
    )
