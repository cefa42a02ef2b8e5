"""MaxSight's neck (projection + optional GRU temporal encoder) and its layer groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo_core.groups import LayerGroups
from zoo_core.specs import Role


class MaxSightNeck(nn.Module):
    """Per-frame projection; from T5 on, a GRU over the frames of a clip."""

    def __init__(self, in_features: int, dim: int = 256, temporal: bool = False) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_features, dim), nn.GELU())
        self.temporal = nn.GRU(dim, dim, batch_first=True) if temporal else None
        self.accepts_clips = temporal
        self.out_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.proj(features)
        if self.temporal is None:
            return projected
        sequence, _ = self.temporal(projected)  # (B, T, D)
        return sequence[:, -1] + projected.mean(dim=1)


def maxsight_neck(in_features: int, **options: Any) -> nn.Module:
    return MaxSightNeck(in_features, **options)


def maxsight_groups(model: Any, granularity: Any, registry: Any) -> LayerGroups:
    """ZooModel groups with the temporal encoder as its own group, so recipes can address it."""
    from zoo_core.zoomodel import zoomodel_groups

    base = zoomodel_groups(model, granularity, registry)
    assignments = []
    for group in base:
        if group.name == "neck":
            proj = [p for p in group.params if not p.startswith("neck.temporal.")]
            temporal = [p for p in group.params if p.startswith("neck.temporal.")]
            assignments.append(("neck", Role.NECK, proj))
            assignments.append(("temporal", Role.NECK, temporal))
        else:
            assignments.append((group.name, group.role, group.params))
    return LayerGroups.partition(model, assignments, what="maxsight")
