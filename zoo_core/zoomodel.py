"""ZooModel: a backbone, an optional neck and named heads, with stable module names.

Stable names (``backbone.*``, ``neck.*``, ``heads.NAME.*``) are what transfer rules and layer
groups address. :func:`build_tier` is the default builder of tier families declared in
``registry.toml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ZooError
from .groups import LayerGroups, layer_groups
from .heads import strip_classifier
from .models import create_model
from .registry import Registry
from .specs import Granularity, Role, TierSpec


class ZooModel(nn.Module):
    """``backbone -> [neck] -> heads``. Takes images ``(B, C, H, W)`` or clips ``(B, T, C, H, W)``.

    The backbone returns a pooled feature vector per frame. For clips, per-frame features go
    to the neck as ``(B, T, F)`` when the neck sets ``accepts_clips = True`` (a temporal
    module); otherwise they are averaged over time first. ``forward`` returns the single
    head's output, or a dict of outputs in head order (the first head is the primary one).
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        neck: nn.Module | None = None,
        *,
        feature_dim: int,
    ) -> None:
        super().__init__()
        if not heads:
            raise ZooError("a ZooModel needs at least one head")
        self.backbone = backbone
        self.register_module("neck", neck)
        self.heads = nn.ModuleDict(dict(heads))
        self.feature_dim = feature_dim
        self.primary_head = next(iter(heads))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the heads: backbone, time handling, neck."""
        if x.dim() == 5:
            batch, frames = x.shape[:2]
            features = self.backbone(x.flatten(0, 1)).unflatten(0, (batch, frames))
            if not getattr(self.neck, "accepts_clips", False):
                features = features.mean(dim=1)
        else:
            features = self.backbone(x)
            if getattr(self.neck, "accepts_clips", False):
                features = features.unsqueeze(1)
        return self.neck(features) if self.neck is not None else features

    def forward_heads(self, features: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        outputs = {name: head(features) for name, head in self.heads.items()}
        return outputs[self.primary_head] if len(outputs) == 1 else outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.forward_heads(self.forward_features(x))

    def zoo_head_split(self) -> tuple[nn.Module, Any]:
        """The module holding every head and the callable that runs them on trunk features."""
        return self.heads, self.forward_heads


class MlpNeck(nn.Module):
    """A projection between backbone features and heads: Linear → activation (→ dropout)."""

    def __init__(self, in_features: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_features, dim), nn.GELU(), nn.Dropout(dropout) if dropout else nn.Identity())
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def mlp_neck(in_features: int, **options: Any) -> nn.Module:
    return MlpNeck(in_features, **options)


def build_backbone(name: str, *, registry: Registry, pretrained: bool = False, **kwargs: Any) -> tuple[nn.Module, int]:
    """A registry model without its classifier, and the width of the features it returns."""
    backbone = create_model(name, pretrained=pretrained, registry=registry, **kwargs)
    return backbone, strip_classifier(backbone, registry)


def build_heads(tier: TierSpec, width: int, num_classes: int | None, registry: Registry) -> dict[str, nn.Module]:
    heads = {}
    for head_name, head in tier.heads.items():
        out = head.out or num_classes or tier.num_classes
        if out is None:
            raise ZooError(f"{tier.name}: head '{head_name}' needs a class count; pass num_classes=N (--num-classes N)")
        factory = registry.factory("head", head.kind).load()
        heads[head_name] = factory(width, out, **head.options)
    return heads


def build_tier(
    tier: TierSpec, *, registry: Registry, num_classes: int | None = None, pretrained_backbone: bool = False, **kwargs: Any
) -> ZooModel:
    """The default tier builder: registry backbone, registered neck and head factories.

    A family's builder takes the tier, ``registry``, ``num_classes``, ``pretrained_backbone``
    (start the backbone from its own pretrained weights: a tier without weights of its own,
    built with ``pretrained=True``) and constructor arguments for the backbone (``in_chans`` …).
    ``params.pretrained_backbone`` asks for the backbone's weights always;
    ``params.backbone_args`` are passed to the backbone's constructor.
    """
    backbone_args = dict(tier.params.get("backbone_args", {}))
    backbone_args.update(kwargs)
    pretrained = pretrained_backbone or bool(tier.params.get("pretrained_backbone", False))
    backbone, width = build_backbone(tier.backbone, registry=registry, pretrained=pretrained, **backbone_args)
    neck = None
    if tier.neck is not None:
        neck = registry.factory("neck", tier.neck.kind).load()(width, **tier.neck.options)
        width = int(neck.out_features)
    return ZooModel(backbone, build_heads(tier, width, num_classes, registry), neck, feature_dim=width)


def zoomodel_groups(model: ZooModel, granularity: Granularity, registry: Registry) -> LayerGroups:
    """A ZooModel's groups: its backbone's own groups, then the neck, then one group per head."""
    inner = layer_groups(model.backbone, granularity=granularity, registry=registry)
    assignments: list[tuple[str, Role, list[str]]] = []
    for group in inner:
        # the backbone's own head group (a norm before its removed classifier) is backbone now
        name = "pre_logits" if group.role is Role.HEAD else group.name
        assignments.append((name, Role.BACKBONE, [f"backbone.{param}" for param in group.params]))
    if model.neck is not None:
        assignments.append(("neck", Role.NECK, [f"neck.{name}" for name, _ in model.neck.named_parameters()]))
    for head_name, head in model.heads.items():
        assignments.append((f"heads.{head_name}", Role.HEAD, [f"heads.{head_name}.{n}" for n, _ in head.named_parameters()]))
    return LayerGroups.partition(model, assignments, what=type(model).__name__)
