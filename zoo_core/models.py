"""Creating models by name: resolve, fetch verified weights, build through the source or tier."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .registry import Registry, default_registry, load_object
from .specs import ResolvedModel
from .weights import weights_path

log = logging.getLogger(__name__)


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    *,
    registry: Registry | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build any registry name as a ``torch.nn.Module``.

    :param name: ``timm:resnet50.a1_in1k``, ``torchvision:resnet18``, ``hf-hub:ORG/REPO``,
        ``file:run/best.pt``, a tier ``family/tier`` or a catalog alias.
    :param pretrained: load the name's pretrained weights (verified against ``zoo.lock``;
        downloaded only when online).
    :param num_classes: classes of the new classifier; ``None`` keeps the pretrained count.
    :param kwargs: passed to the underlying constructor (``drop_rate``, ``in_chans`` …).
    """
    registry = registry or default_registry()
    return build_model(registry.resolve(name), registry=registry, pretrained=pretrained, num_classes=num_classes, **kwargs)


def build_model(
    resolved: ResolvedModel,
    *,
    registry: Registry,
    pretrained: bool = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an already resolved model (see :func:`create_model`)."""
    path = weights_path(resolved) if pretrained else None
    if resolved.tier is not None:
        family = registry.family(resolved.tier.family)
        builder = load_object(family.builder)
        model = builder(resolved.tier, registry=registry, num_classes=num_classes or resolved.num_classes, **kwargs)
        if path is not None:
            _load_tier_weights(model, resolved, path, registry)
    else:
        source = registry.source(resolved.source)
        model = source.create(resolved, registry=registry, weights_path=path, num_classes=num_classes, **kwargs)
    model.zoo_spec = resolved
    return model


def _load_tier_weights(model: nn.Module, resolved: ResolvedModel, path: Any, registry: Registry) -> None:
    """Carry a tier's own weights in through a transfer plan (heads may have new class counts)."""
    from .transfer import plan_transfer

    plan = plan_transfer(path, model, registry=registry, target_classes=resolved.class_names)
    plan.apply(model)
    log.info("%s: loaded pretrained weights: %s", resolved.name, plan.summary())


def build_skeleton(resolved: ResolvedModel, *, registry: Registry, num_classes: int | None = None) -> nn.Module:
    """The model without weights, on the meta device when its builder allows (no memory, no init cost)."""
    import torch

    try:
        with torch.device("meta"):
            return build_model(resolved, registry=registry, pretrained=False, num_classes=num_classes)
    except (NotImplementedError, RuntimeError):  # builders that compute with real tensors
        return build_model(resolved, registry=registry, pretrained=False, num_classes=num_classes)
