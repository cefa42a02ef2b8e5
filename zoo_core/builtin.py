"""Zoo's own plugin: head and neck factories, what a ZooModel knows about itself, and the
default unfreeze schedule.

It is declared in the ``zoo`` entry-point group like any third-party plugin, and can be
blocked the same way (``ZOO_DISABLE_PLUGINS=core``).
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl


@hookimpl
def zoo_register_heads(register: Any) -> None:
    register("linear", "zoo_core.heads:linear_head", description="optional dropout, then one linear layer")
    register("mlp", "zoo_core.heads:mlp_head", description="hidden layers (hidden, dropout, activation), then linear")


@hookimpl
def zoo_register_necks(register: Any) -> None:
    register("mlp", "zoo_core.zoomodel:mlp_neck", description="linear projection to `dim` with GELU")


@hookimpl(trylast=True)
def zoo_unfreeze_schedule(recipe: Any, groups: Any) -> Any:
    from .freeze import stage_schedule

    return stage_schedule(recipe, groups)


@hookimpl(trylast=True)
def zoo_layer_groups(model: Any, spec: Any, granularity: Any, registry: Any) -> Any:
    from .zoomodel import ZooModel, zoomodel_groups

    return zoomodel_groups(model, granularity, registry) if isinstance(model, ZooModel) else None


@hookimpl(trylast=True)
def zoo_classifier(model: Any) -> Any:
    from .zoomodel import ZooModel

    if not isinstance(model, ZooModel):
        return None
    return f"heads.{model.primary_head}", model.heads[model.primary_head]


@hookimpl(trylast=True)
def zoo_feature_maps(model: Any, registry: Any) -> Any:
    from .features import traced_feature_maps

    return traced_feature_maps(model, registry)
