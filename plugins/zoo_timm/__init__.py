"""Zoo plugin: timm (PyTorch Image Models) as a backbone source, with its layer groups.

Names: ``timm:ARCH[.TAG]``, exactly what ``timm.create_model`` takes (``resnet50.a1_in1k``).
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_sources(register: Any) -> None:
    from .source import TimmSource

    register(TimmSource())


@hookimpl(trylast=True)
def zoo_layer_groups(model: Any, spec: Any, granularity: str) -> Any:
    if not callable(getattr(model, "group_matcher", None)):
        return None
    from .groups import timm_layer_groups

    return timm_layer_groups(model, granularity)
