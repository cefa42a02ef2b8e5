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


def _is_timm(model: Any) -> bool:
    return callable(getattr(model, "get_classifier", None)) and type(model).__module__.startswith("timm.")


@hookimpl(trylast=True)
def zoo_layer_groups(model: Any, spec: Any, granularity: str) -> Any:
    if not callable(getattr(model, "group_matcher", None)):
        return None
    from .groups import timm_layer_groups

    return timm_layer_groups(model, granularity)


@hookimpl(trylast=True)
def zoo_classifier(model: Any) -> Any:
    if not _is_timm(model):
        return None
    from .anatomy import timm_classifier

    return timm_classifier(model)


@hookimpl(trylast=True)
def zoo_reset_classifier(model: Any, num_classes: int) -> Any:
    if not (_is_timm(model) and callable(getattr(model, "reset_classifier", None))):
        return None
    from .anatomy import reset_timm_classifier

    return reset_timm_classifier(model, num_classes)


@hookimpl(trylast=True)
def zoo_input_config(model: Any) -> Any:
    if not _is_timm(model):
        return None
    from .anatomy import timm_input_config

    return timm_input_config(model)


@hookimpl(trylast=True)
def zoo_head_dropout(model: Any) -> Any:
    # timm applies drop_rate functionally before the classifier: no module shows it
    return float(getattr(model, "drop_rate", 0) or 0) if _is_timm(model) else None


@hookimpl
def zoo_feature_maps(model: Any) -> Any:
    if not _is_timm(model):
        return None
    from .anatomy import timm_feature_maps

    return timm_feature_maps(model)
