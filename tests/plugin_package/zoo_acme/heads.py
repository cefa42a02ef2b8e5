from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.scale = scale
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.fc.weight, dim=-1))


def cosine_head(in_features: int, out_features: int, **options: float) -> nn.Module:
    return CosineHead(in_features, out_features, **options)
