"""Zoo plugin: torchvision's model builders as a backbone source, with layer-group heuristics.

Names: ``torchvision:BUILDER[.WEIGHTS]`` where WEIGHTS is a member of the builder's weights
enum, e.g. ``torchvision:resnet50.IMAGENET1K_V2``.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_sources(register: Any) -> None:
    from .source import TorchvisionSource

    register(TorchvisionSource())


@hookimpl(trylast=True)
def zoo_layer_groups(model: Any, spec: Any, granularity: str) -> Any:
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    from .groups import torchvision_layer_groups

    return torchvision_layer_groups(model, granularity)
