"""The task interface: everything that depends on what is being predicted.

The engine never looks inside a batch. A task reads its data, builds datasets and the
collate function, applies batch-level augmentation, calls the model, computes the loss (a
dict of named components plus their weighted total, ``"loss"``) and the metrics. Batches may
hold targets of any shape (class indices, lists of box dicts …) and images of any size; only
the task touches them.

Optional: ``cached_batch(dataset, indices, inputs)`` builds a batch of the given items with
the given (cached trunk) inputs without loading the items' images; the feature cache uses it
when present. ``model_name(name, *, detector, registry)`` says which model to build for the
name the user gave (detection composes ``NAME+detector/fcos``). ``check_recipe(recipe, model)``
refuses stage settings the model cannot honour (a ``loss_scales`` key naming no loss component,
a ``loss_norm`` for a loss that is already a mean) before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from ..specs import InputConfig, Recipe

MIN_IMAGE_SIZE = 16  # pixels: below it, a backbone that downsamples 32 times sees a single pixel


@attrs.frozen
class TaskData:
    """What a task read from a data folder."""

    root: Path
    class_names: tuple[str, ...]
    train: Any  # task-defined item lists
    val: Any
    split: str  # how train/val were obtained, for the run record

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "class_names": list(self.class_names),
            "train": len(self.train),
            "val": len(self.val),
            "split": self.split,
        }


@runtime_checkable
class Metrics(Protocol):
    """Accumulates over batches; ``compute()`` returns plain floats."""

    def update(self, outputs: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


@runtime_checkable
class Task(Protocol):
    name: str
    augment_keys: frozenset[str]  # the stage `augment` settings this task understands
    monitor: tuple[str, str]  # default metric for `best` and its mode, e.g. ("val_loss", "min")

    def load_data(self, root: Path, *, seed: int, val_fraction: float, classes: Sequence[str] | None = None) -> TaskData:
        """Read a data folder; ``classes`` (``--classes``) keeps only those classes, in that order.

        A task with dataset readers (``zoo_register_datasets``) is also passed ``reader``, the
        :class:`zoo_core.datasets.DatasetReader` picked for ``root``; the others never are.
        """
        ...

    def num_classes(self, data: TaskData) -> int:
        """Outputs the model's classifier needs for ``data`` (the engine never counts them itself)."""
        ...

    def dataset(self, data: TaskData, split: str, *, input_config: InputConfig, augment: Mapping[str, Any]) -> Any:
        """Items of ``split`` with ``augment``'s transforms, decoded when read. A task may also take
        ``image_cache`` (a :class:`~zoo_core.imagecache.SharedImageCache`), passed only under
        ``--cache-images``, to keep decoded images in."""

    def collate(self, items: Sequence[Any]) -> Any: ...

    def deterministic(self, augment: Mapping[str, Any]) -> bool: ...

    def augment_batch(self, batch: Any, augment: Mapping[str, Any], generator: Any) -> Any: ...

    def to_device(self, batch: Any, device: Any, channels_last: bool) -> Any: ...

    def inputs(self, batch: Any) -> Any: ...

    def with_inputs(self, batch: Any, inputs: Any) -> Any: ...

    def forward(self, model: Any, batch: Any) -> Any: ...

    def loss(
        self, outputs: Any, batch: Any, *, loss_scales: Mapping[str, float], loss_norm: Sequence[str], recipe: Recipe | None
    ) -> dict[str, Any]:
        """Named loss components and their weighted total ``"loss"``.

        ``loss_norm`` is the stage's (empty: the task's or model's default); validation always
        passes the default, so that validation losses compare across stages. ``recipe`` is the
        recipe being trained (the task reads its own settings from it, e.g. classification's
        ``label_smoothing``), or ``None`` when evaluating.
        """
        ...

    def metrics(self, data: TaskData) -> Metrics: ...

    def batch_size(self, batch: Any) -> int: ...
