"""The 'tiny' tier family: t1 (small backbone, one head) and t2 (bigger backbone, a neck, two heads).

Hook modules stay light: specs are plain data, and torch is imported only inside factories.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl
from zoo_core.specs import FamilySpec, HeadSpec, NeckSpec, Origin, ShapePolicy, TierSpec, TransferRules

ORIGIN = Origin("plugin zoo-tiny-tiers")


@hookimpl
def zoo_register_tiers(register: Any) -> None:
    t1 = TierSpec(
        family="tiny",
        tier="t1",
        rank=1,
        backbone="timm:resnet10t",
        heads={"classifier": HeadSpec("linear")},
        description="resnet10t, linear classifier",
        origin=ORIGIN,
    )
    t2 = TierSpec(
        family="tiny",
        tier="t2",
        rank=2,
        backbone="timm:resnet14t",
        neck=NeckSpec("tiny-bottleneck", {"dim": 128}),
        heads={"classifier": HeadSpec("linear"), "quality": HeadSpec("linear", out=1)},
        description="resnet14t, bottleneck neck, classifier + image-quality head",
        origin=ORIGIN,
    )
    register(
        FamilySpec(
            name="tiny",
            tiers={"t1": t1, "t2": t2},
            description="Two tiny sizes with a shared stem",
            # carry the backbone and the classifier between sizes; anything else starts fresh
            rules=TransferRules(include=(r"^backbone\.", r"^heads\.classifier\."), shape=ShapePolicy.SKIP),
            origin=ORIGIN,
        )
    )


@hookimpl
def zoo_register_necks(register: Any) -> None:
    register("tiny-bottleneck", "zoo_tiny_tiers.necks:bottleneck", description="Linear -> ReLU down to `dim`")
