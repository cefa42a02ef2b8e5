"""Inference with a trained checkpoint: ``load_model`` and ``zoo predict``.

The model is rebuilt from the checkpoint's provenance, put in eval mode, and paired with what
it was trained with: its class names, input config and task. What a prediction is (the top
classes, or boxes with scores) is the task's: it reads, prepares and answers for images
through its ``predict`` method, and draws through ``draw``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .errors import DataError, ZooError
from .registry import Registry, default_registry
from .specs import InputConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@attrs.frozen(eq=False)
class LoadedModel:
    """A checkpoint's model, ready for inference, with what it needs to be used."""

    model: nn.Module
    class_names: tuple[str, ...]
    input_config: InputConfig
    task: Any
    device: torch.device
    provenance: dict[str, Any]

    @property
    def transform(self) -> Any:
        """The task's transform for one image (resize and normalise as in training)."""
        return self.task.predict_transform(self.input_config)

    def predict(self, images: Sequence[Path | str], *, threshold: float | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
        """One answer per image, as the task gives it (``{"image", "classes"}`` or ``{"image", "boxes"}``)."""
        paths = [Path(image) for image in images]
        return self.task.predict(self, paths, threshold=threshold, top_k=top_k)


def load_model(checkpoint: str | Path, *, device: str | None = None, registry: Registry | None = None) -> LoadedModel:
    """Rebuild a Zoo checkpoint's model for inference: eval mode, on ``device``, with its class names and transform."""
    from .engine.api import model_from_checkpoint, recorded_inputs
    from .engine.device import configure, pick_device

    registry = registry or default_registry()
    model, loaded = model_from_checkpoint(checkpoint, registry=registry)
    provenance = dict(loaded.provenance)
    task = registry.task(provenance.get("task") or "classification")
    if not callable(getattr(task, "predict", None)):
        raise ZooError(f"task '{task.name}' cannot predict (it has no predict method); evaluate with `zoo eval` instead")
    chosen = configure(pick_device(device)).device
    class_names = tuple(provenance.get("class_names") or ())
    inputs = recorded_inputs(provenance, model, registry)
    return LoadedModel(model.to(chosen).eval(), class_names, inputs, task, chosen, provenance)


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Images named directly, and the images inside named folders (sorted); a missing path is an error."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such image or folder")
    if not found:
        raise DataError(f"no images in {', '.join(map(str, inputs))} ({', '.join(IMAGE_SUFFIXES[:4])} …)")
    return found
