"""Feature extraction mode: named intermediate maps (or pooled vectors) from a frozen backbone.

timm models answer through ``forward_intermediates`` and their ``feature_info``; anything else
(torchvision included) through ``torchvision.models.feature_extraction.create_feature_extractor``.
The extractor is frozen and pinned in eval mode, so a stray ``.train()`` cannot switch its
BatchNorm or dropout back on (seed 004's first pitfall).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .anatomy import FeatureMaps, common_prefix, unwrap
from .errors import ZooError, did_you_mean
from .freeze import pin_eval
from .groups import layer_groups
from .models import create_model
from .registry import Registry, default_registry
from .specs import Role

POOLS = ("none", "avg", "max")


def _timm_layers(model: nn.Module) -> list[str]:
    return [info["module"] for info in model.feature_info]


def _default_fx_layers(model: nn.Module, registry: Any) -> list[str]:
    """One node per backbone layer group after the stem: its modules' common prefix."""
    groups = layer_groups(model, registry=registry)
    prefixes = [common_prefix(group.params) for group in groups if group.role is Role.BACKBONE and group.name != "stem"]
    return [prefix for prefix in prefixes if prefix]


class FeatureExtractor(nn.Module):
    """``FeatureExtractor("timm:resnet50", layers=["layer2", "layer4"], pool="avg")(x)`` -> dict.

    A module passed in is frozen and pinned in eval mode in place; pass a copy to keep training it.
    """

    def __init__(
        self,
        name_or_model: str | nn.Module,
        layers: Sequence[str | int] | None = None,
        pool: str = "none",
        *,
        pretrained: bool = False,
        registry: Registry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ZooError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        registry = registry or default_registry()
        if isinstance(name_or_model, str):
            model = create_model(name_or_model, pretrained=pretrained, registry=registry, **kwargs)
        else:
            model = name_or_model
        model = unwrap(model)
        model = getattr(model, "backbone", model)  # a ZooModel's trunk
        self.pool = pool
        if callable(getattr(model, "forward_intermediates", None)) and getattr(model, "feature_info", None):
            available = _timm_layers(model)
            self.layers = self._select(layers, available)
            self.indices = [available.index(name) for name in self.layers]
            self.body = model
            self.kind = "timm"
        else:
            from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

            available = get_graph_node_names(model)[1]
            wanted = list(layers) if layers else _default_fx_layers(model, registry)
            self.layers = self._select(wanted, available)
            self.body = create_feature_extractor(model, return_nodes={name: name for name in self.layers})
            self.kind = "fx"
        for param in self.parameters():
            param.requires_grad_(False)
        pin_eval(self)

    @staticmethod
    def _select(wanted: Sequence[str | int] | None, available: Sequence[str]) -> list[str]:
        if not wanted:
            return list(available)
        chosen = []
        for item in wanted:
            if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
                index = int(item)
                if not -len(available) <= index < len(available):
                    raise ZooError(f"layer index {index} is out of range; layers: {', '.join(available)}")
                chosen.append(available[index])
            elif item in available or any(node.startswith(f"{item}.") for node in available):
                chosen.append(item)  # a module name stands for its output (torchvision feature extraction)
            else:
                shown = ", ".join(available[:12]) + (" …" if len(available) > 12 else "")
                raise ZooError(f"unknown layer '{item}'{did_you_mean(str(item), available)} (layers: {shown})")
        return chosen

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "timm":
            maps = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)
            features = dict(zip(self.layers, maps))
        else:
            features = dict(self.body(x))
        if self.pool == "none":
            return features
        pooled = {}
        for name, value in features.items():
            if value.dim() == 4:
                value = value.mean(dim=(2, 3)) if self.pool == "avg" else value.amax(dim=(2, 3))
            elif value.dim() == 3:  # tokens (B, N, C)
                value = value.mean(dim=1) if self.pool == "avg" else value.amax(dim=1)
            pooled[name] = value
        return pooled


def _graph_maps(graph: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    return list(graph(images).values())


def traced_feature_maps(model: nn.Module, registry: Registry, probe_size: int = 224) -> FeatureMaps:
    """One map per backbone layer group after the stem, through torchvision's feature extraction.

    The graph shares the model's modules (it is not registered under the model), so its
    parameters keep their names. Channels and strides come from one forward pass at
    ``probe_size`` on the model's own device (no memory on the meta device).
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    layers = _default_fx_layers(model, registry)
    graph = create_feature_extractor(model, return_nodes={name: name for name in layers})
    first = next(model.parameters())
    with torch.no_grad():
        probe = _graph_maps(graph, torch.zeros(1, first.shape[1] if first.dim() == 4 else 3, probe_size, probe_size, device=first.device))
    return FeatureMaps(
        functools.partial(_graph_maps, graph),
        channels=tuple(int(level.shape[1]) for level in probe),
        strides=tuple(probe_size // int(level.shape[-1]) for level in probe),
        names=tuple(layers),
    )
