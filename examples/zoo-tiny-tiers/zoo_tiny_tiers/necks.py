"""The neck of tier t2 (imported only when a t2 model is built)."""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, in_features: int, dim: int = 128) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_features, dim), nn.ReLU(inplace=True))
        self.out_features = dim  # heads are built on this width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def bottleneck(in_features: int, dim: int = 128) -> nn.Module:
    return Bottleneck(in_features, dim)
