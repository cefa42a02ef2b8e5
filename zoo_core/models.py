"""Creating models by name: resolve, fetch verified weights, build through the source or tier."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .lockfile import LockFile
from .registry import Registry, default_registry, load_object
from .specs import ResolvedModel, TransferRules
from .tensors import TensorSource
from .transfer import PlanTarget, plan
from .weights import fetch

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
        downloaded only when online). A tier without weights of its own starts from its
        backbone's pretrained weights.
    :param num_classes: classes of the new classifier; ``None`` keeps the pretrained count.
    :param kwargs: passed to the underlying constructor (``drop_rate``, ``in_chans`` …).
    """
    registry = registry or default_registry()
    return build_model(registry.resolve(name), registry=registry, pretrained=pretrained, num_classes=num_classes, **kwargs)


def has_own_weights(resolved: ResolvedModel) -> bool:
    """Pretrained weights of the name itself: resolved, or imported with ``zoo import``."""
    if resolved.has_weights:
        return True
    entry = LockFile.read().get(resolved.name)
    return entry is not None and entry.method == "import"


def build_model(
    resolved: ResolvedModel,
    *,
    registry: Registry,
    pretrained: bool = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an already resolved model (see :func:`create_model`)."""
    if resolved.tier is not None:
        model = _build_tier(resolved, registry=registry, pretrained=pretrained, num_classes=num_classes, **kwargs)
    else:
        path = fetch(resolved)[0].path if pretrained else None
        source = registry.source(resolved.source)
        model = source.create(resolved, registry=registry, weights_path=path, num_classes=num_classes, **kwargs)
    model.zoo_spec = resolved
    return model


def _build_tier(resolved: ResolvedModel, *, registry: Registry, pretrained: bool, num_classes: int | None, **kwargs: Any) -> nn.Module:
    """A tier through its family's builder; its own weights carried in, or its backbone's pretrained ones."""
    tier = resolved.tier
    builder = load_object(registry.family(tier.family).builder)
    own = pretrained and has_own_weights(resolved)
    if pretrained and not own:
        kwargs["pretrained_backbone"] = True  # the builder loads the backbone's own pretrained weights
    model = builder(tier, registry=registry, num_classes=num_classes or resolved.num_classes, **kwargs)
    if own:
        _load_own_weights(model, resolved, registry)
    return model


def _load_own_weights(model: nn.Module, resolved: ResolvedModel, registry: Registry) -> None:
    """Carry a tier's own weights in through a plan (its heads may have a new class count)."""
    located = fetch(resolved)[0]
    source = TensorSource.from_file(located.path, spec=resolved, sha256=located.sha256)
    target = PlanTarget.of(model, name=resolved.name, registry=registry, class_names=resolved.class_names)
    planned = plan(source, target, TransferRules())
    planned.apply(model)
    log.info("%s: loaded pretrained weights: %s", resolved.name, planned.summary())


def build_skeleton(resolved: ResolvedModel, *, registry: Registry, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """The model without weights, on the meta device when its builder allows (no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return build_model(resolved, registry=registry, pretrained=False, num_classes=num_classes, **kwargs)
    except (NotImplementedError, RuntimeError):  # builders that compute with real tensors
        return build_model(resolved, registry=registry, pretrained=False, num_classes=num_classes, **kwargs)
