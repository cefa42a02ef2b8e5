"""Zoo plugin: object detection — COCO-format data, FCOS/RetinaNet/Faster R-CNN/MultiGridDet heads over any
registry backbone with an FPN neck, COCO mAP and precision/recall/F1.

Detectors are tiers of the ``detector`` family (``detector/fcos``, ``detector/retinanet``,
``detector/fasterrcnn``, ``detector/multigrid``), composed over a backbone by name: ``timm:resnet18+detector/fcos``.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl

HEADS = {  # kind: (factory, description)
    "fcos": ("zoo_detection.model:fcos_head", "FCOS: one point per location, centre-ness, no anchors (torchvision)"),
    "retinanet": ("zoo_detection.model:retinanet_head", "RetinaNet: 9 anchors per location, focal loss (torchvision)"),
    "fasterrcnn": (
        "zoo_detection.model:fasterrcnn_head",
        "Faster R-CNN: region proposals, then RoI heads (torchvision)",
    ),
    "multigrid": (
        "zoo_detection.multigrid:multigrid_head",
        "MultiGridDet: a YOLO-style anchor grid, each object on its 3x3 cells; coord/object/no_object/class/anchor losses",
    ),
}


def _is_detector(model: Any) -> bool:
    from .model import Detector

    return isinstance(model, Detector)


@hookimpl
def zoo_register_tasks(register: Any) -> None:
    from .task import DetectionTask

    register(DetectionTask())


@hookimpl
def zoo_register_heads(register: Any) -> None:
    for kind, (factory, description) in HEADS.items():
        register(kind, factory, description=description)


@hookimpl
def zoo_register_necks(register: Any) -> None:
    register("fpn", "zoo_detection.model:fpn_neck", description="torchvision's feature pyramid over the backbone's last maps")


@hookimpl
def zoo_register_tiers(register: Any) -> None:
    from zoo_core.specs import FamilySpec, HeadSpec, NeckSpec, TierSpec

    from .task import DETECTOR_BUILDER, DETECTOR_FAMILY

    tiers = {
        kind: TierSpec(
            family=DETECTOR_FAMILY, tier=kind, rank=rank, backbone="timm:resnet50", neck=NeckSpec("fpn"),
            heads={"detect": HeadSpec(kind)}, description=description,
        )  # fmt: skip
        for rank, (kind, (_, description)) in enumerate(HEADS.items())
    }
    register(
        FamilySpec(
            name=DETECTOR_FAMILY, tiers=tiers, builder=DETECTOR_BUILDER,
            description="torchvision detection heads over an FPN; put one over any backbone: NAME+detector/fcos",
        )  # fmt: skip
    )


@hookimpl
def zoo_layer_groups(model: Any, spec: Any, granularity: Any, registry: Any) -> Any:
    if not _is_detector(model):
        return None
    from zoo_core.zoomodel import zoomodel_groups

    return zoomodel_groups(model, granularity, registry)  # the backbone's own groups, then neck, then heads.detect


@hookimpl
def zoo_class_rows(model: Any) -> Any:
    return model.class_rows() if _is_detector(model) else None


@hookimpl
def zoo_classifier(model: Any) -> Any:
    if not _is_detector(model):
        return None
    from zoo_core.errors import ZooError

    raise ZooError(f"{type(model).__name__}: a detector scores classes per box, in heads.detect; it has no classifier to replace")
