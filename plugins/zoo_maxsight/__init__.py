"""Zoo plugin: the MaxSight tier family (T1 … T5), modelled on MaxSight's tier transfer.

Backbones and heads grow with the tier; a temporal encoder exists only from T5 on. The
family's rules carry what tiers share (backbone, neck projection, heads) and leave the rest
new, so a T2 → T5 transfer reports the temporal encoder as ``new``. Checkpoints written by
MaxSight's own training code (``fpn.*``, ``classification_head.*`` …) are renamed on the way in.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl

FAMILY = "maxsight"


@hookimpl
def zoo_register_tiers(register: Any) -> None:
    from .family import maxsight_family

    register(maxsight_family())


@hookimpl
def zoo_register_necks(register: Any) -> None:
    register("maxsight", "zoo_maxsight.model:maxsight_neck", description="MaxSight projection (+ GRU temporal encoder)")


@hookimpl
def zoo_transfer_rules(source: Any, target: Any) -> Any:
    if target is None or target.tier is None or target.tier.family != FAMILY or source is not None:
        return None
    from .family import legacy_rules

    return legacy_rules()


@hookimpl
def zoo_layer_groups(model: Any, spec: Any, granularity: Any, registry: Any) -> Any:
    if spec is None or spec.tier is None or spec.tier.family != FAMILY:
        return None
    from .model import maxsight_groups

    return maxsight_groups(model, granularity, registry)
