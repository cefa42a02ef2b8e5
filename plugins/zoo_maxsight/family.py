"""The MaxSight tiers and their transfer rules."""

from __future__ import annotations

from zoo_core.specs import FamilySpec, HeadSpec, NeckSpec, Origin, ShapePolicy, TierSpec, TransferRules

ORIGIN = Origin("plugin zoo_maxsight")


def _tier(name: str, rank: int, backbone: str, heads: dict[str, HeadSpec], *, neck: NeckSpec | None, description: str) -> TierSpec:
    return TierSpec(
        family="maxsight",
        tier=name,
        rank=rank,
        backbone=backbone,
        neck=neck,
        heads=heads,
        description=description,
        origin=ORIGIN,
    )


def maxsight_family() -> FamilySpec:
    classifier = HeadSpec("linear")
    distance = HeadSpec("linear", out=1)
    box = HeadSpec("mlp", out=4, options={"hidden": [128], "dropout": 0.0})
    neck = NeckSpec("maxsight", {"dim": 256})
    tiers = [
        _tier("t1", 1, "timm:resnet10t", {"classifier": classifier}, neck=None, description="classification only"),
        _tier("t2", 2, "timm:resnet14t", {"classifier": classifier, "distance": distance}, neck=neck,
              description="+ projection neck, distance head"),
        _tier("t3", 3, "timm:resnet14t", {"classifier": classifier, "distance": distance, "box": box}, neck=neck,
              description="+ box head"),
        _tier("t4", 4, "timm:resnet26t", {"classifier": classifier, "distance": distance, "box": box}, neck=neck,
              description="deeper backbone"),
        _tier("t5", 5, "timm:resnet26t", {"classifier": classifier, "distance": distance, "box": box},
              neck=NeckSpec("maxsight", {"dim": 256, "temporal": True}), description="+ temporal encoder over clips"),
    ]
    return FamilySpec(
        name="maxsight",
        tiers={tier.tier: tier for tier in tiers},
        description="MaxSight assistive-vision tiers T1-T5 (growing backbones and heads; temporal encoder from T5)",
        # what tiers share: everything else (the temporal encoder) stays at its initialisation
        rules=TransferRules(include=(r"^backbone\.", r"^neck\.proj\.", r"^heads\."), shape=ShapePolicy.SKIP, class_aware=True),
        origin=ORIGIN,
    )


def legacy_rules() -> TransferRules:
    """Key names used by checkpoints from MaxSight's own training scripts."""
    return TransferRules(
        rename=(
            (r"^fpn\.", "neck.proj."),
            (r"^classification_head\.", "heads.classifier.fc."),
            (r"^distance_head\.", "heads.distance.fc."),
        )
    )
