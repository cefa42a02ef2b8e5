"""Evaluation shared by the engine's validation and ``zoo eval``: mean losses and task metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .device import DeviceConfig
from .task import TaskData


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    task: Any,
    dataset: Any,
    *,
    data: TaskData,
    batch_size: int,
    device: DeviceConfig,
    loss_scales: Mapping[str, float] | None = None,
    workers: int = 0,
    collate: Any = None,
) -> dict[str, float]:
    """``val_loss``, ``val_<component>`` and the task's metrics over ``dataset`` (model in eval mode).

    ``collate`` replaces the task's own (the engine passes one that serves cached trunk features).
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate or task.collate,
        num_workers=0 if collate else workers,
        pin_memory=device.pin_memory,
    )
    was_training = model.training
    model.eval()
    metrics = task.metrics(data)
    totals: dict[str, float] = {}
    count = 0
    try:
        for batch in loader:
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
    return result
