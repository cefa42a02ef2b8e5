"""A bounded cache of decoded images in shared memory: one copy for all DataLoader workers.

Decoding is the data path's main cost, and a per-process dict of decoded images grows with the
dataset in every worker (ImageNet at 224 px would be about 190 GB, per worker). This cache is
one block of shared memory of a fixed size, allocated before the workers start, with a table of
where each image lies. Workers fill it as they read; once it is full, the remaining images are
decoded on every access. Allocation takes a lock; reads take none (an entry is marked ready
after its bytes are written).

Why not ``torch.utils.data``'s own: it has no cache; timm and torchvision decode per access.
"""

from __future__ import annotations

import logging
import multiprocessing
import os

import torch

from .sizes import format_size

log = logging.getLogger(__name__)

_OFFSET, _CHANNELS, _HEIGHT, _WIDTH, _READY = range(5)
SHARED_MEMORY = "/dev/shm"  # where POSIX shared memory lives on Linux; containers often make it small


def _shared_memory_free() -> int | None:
    try:
        stat = os.statvfs(SHARED_MEMORY)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class SharedImageCache:
    """Up to ``capacity`` bytes of uint8 ``(C, H, W)`` images for ``count`` items, shared by processes."""

    def __init__(self, count: int, capacity: int) -> None:
        free = _shared_memory_free()
        if free is not None and capacity > free:
            log.warning(
                "image cache: %s asked for, %s free in %s; caching %s (raise the container's shared memory, "
                "e.g. docker --shm-size, to cache more)", format_size(capacity), format_size(free), SHARED_MEMORY, format_size(free // 2),
            )  # fmt: skip
            capacity = free // 2  # the DataLoader's workers pass their batches through the same space
        self.capacity = capacity
        # shared memory pages cost nothing until written, so the block is the budget, not the footprint
        self._arena = torch.empty(max(capacity, 1), dtype=torch.uint8).share_memory_()
        self._table = torch.full((count, 5), -1, dtype=torch.int64).share_memory_()
        self._used = torch.zeros(1, dtype=torch.int64).share_memory_()
        # DataLoader starts workers with the default start method, so a lock from the default context
        # is inherited by them (fork) or pickled into them as a Process argument (spawn)
        self._lock = multiprocessing.Lock()

    def __len__(self) -> int:
        return int((self._table[:, _READY] == 1).sum())

    @property
    def used(self) -> int:
        return int(self._used[0])

    def get(self, key: int) -> torch.Tensor | None:
        """Item ``key``'s image (a copy, safe to transform in place), or ``None`` if not cached."""
        row = self._table[key]
        if int(row[_READY]) != 1:
            return None
        offset, channels, height, width = (int(v) for v in row[:_READY])
        return self._arena[offset : offset + channels * height * width].view(channels, height, width).clone()

    def put(self, key: int, image: torch.Tensor) -> bool:
        """Keep ``image`` (uint8, ``(C, H, W)``) for item ``key`` if it fits; ``False`` when the cache is full."""
        if image.dtype != torch.uint8 or image.dim() != 3:
            raise TypeError(f"the image cache holds uint8 (C, H, W) tensors, got {image.dtype} {tuple(image.shape)}")
        size = image.numel()
        with self._lock:
            if int(self._table[key, _READY]) != -1:  # cached, or being written by another worker
                return True
            offset = int(self._used[0])
            if offset + size > self.capacity:
                return False
            self._used[0] = offset + size
            self._table[key, _READY] = 0
        self._arena[offset : offset + size].copy_(image.reshape(-1))
        self._table[key, :_READY] = torch.tensor([offset, *image.shape])
        self._table[key, _READY] = 1  # last: a reader sees the entry only once its bytes are there
        return True
