"""What timm models know about themselves: classifier, its reset, input config, head dropout, feature maps."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from zoo_core.anatomy import FeatureMaps, module_name
from zoo_core.errors import ZooError
from zoo_core.specs import InputConfig


def classifier_module(model: Any) -> nn.Module:
    classifier = model.get_classifier()
    if isinstance(classifier, tuple):  # distilled ViTs return (head, head_dist)
        classifier = classifier[0]
    return classifier


def timm_classifier(model: Any) -> tuple[str, nn.Module]:
    classifier = classifier_module(model)
    if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
        raise ZooError(f"{type(model).__name__}: has no classifier (it was removed); give it a head first")
    return module_name(model, classifier), classifier


def reset_timm_classifier(model: Any, num_classes: int) -> nn.Module:
    """timm's own ``reset_classifier``, which keeps ``num_classes`` and the config in step."""
    model.reset_classifier(num_classes)
    classifier = classifier_module(model)
    return classifier if isinstance(classifier, nn.Module) else nn.Identity()


def timm_input_config(model: Any) -> InputConfig | None:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not cfg.get("input_size"):
        return None
    channels, height = cfg["input_size"][0], cfg["input_size"][1]
    return InputConfig(
        size=height,
        channels=channels,
        mean=cfg.get("mean", InputConfig().mean),
        std=cfg.get("std", InputConfig().std),
        crop_pct=float(cfg.get("crop_pct") or InputConfig().crop_pct),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
    ).for_channels(channels)


def _intermediates(model: nn.Module, indices: list[int], images: torch.Tensor) -> list[torch.Tensor]:
    return model.forward_intermediates(images, indices=indices, intermediates_only=True)


def timm_feature_maps(model: nn.Module) -> FeatureMaps | None:
    """Every stage's output through ``forward_intermediates``, described by ``feature_info``."""
    info = getattr(model, "feature_info", None)
    if not (callable(getattr(model, "forward_intermediates", None)) and info):
        return None
    indices = list(range(len(info)))
    return FeatureMaps(
        functools.partial(_intermediates, model, indices),
        channels=tuple(int(level["num_chs"]) for level in info),
        strides=tuple(int(level["reduction"]) for level in info),
        names=tuple(str(level["module"]) for level in info),
    )
