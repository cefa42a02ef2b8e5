"""Evaluation shared by the engine's validation and ``zoo eval``: mean losses and task metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .device import DeviceConfig
from .loading import batches
from .task import TaskData


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    task: Any,
    loader: Iterable[Any],
    *,
    data: TaskData,
    device: DeviceConfig,
    loss_scales: Mapping[str, float] | None = None,
    details: bool = False,
) -> dict[str, Any]:
    """``val_loss``, ``val_<component>`` and the task's metrics over ``loader``'s batches (model in eval mode).

    ``details`` adds what the task's metrics give beyond numbers (``details()``: per-class figures,
    a confusion matrix), for ``zoo eval``.

    ``loader`` is a :func:`~.loading.make_loader` loader: of images, or of cached trunk features
    for a model that runs only the heads.
    """
    was_training = model.training
    model.eval()
    metrics = task.metrics(data)
    totals: dict[str, float] = {}
    count = 0
    try:
        for batch in batches(loader):
            batch = task.to_device(batch, device.device, device.channels_last)
            with device.autocast():
                outputs = task.forward(model, batch)
                losses = task.loss(
                    outputs, batch, loss_scales=loss_scales or {}, loss_norm=(), recipe=None
                )  # no training-only terms
            size = task.batch_size(batch)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value) * size
            metrics.update(outputs, batch)
            count += size
    finally:
        model.train(was_training)
    result = {("val_loss" if name == "loss" else f"val_{name}"): total / max(count, 1) for name, total in totals.items()}
    result.update(metrics.compute())
    if details and callable(getattr(metrics, "details", None)):
        result.update(metrics.details())
    return result
