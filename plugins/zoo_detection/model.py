"""Detectors over registry backbones: the backbone's own modules, an FPN neck, a detection head.

A :class:`Detector` holds the classification model with its classifier removed under
``backbone`` (so ``backbone.layer1.0.conv1.weight`` is the classifier's ``layer1.0.conv1.weight``
and weights move between the two without renames), torchvision's ``FeaturePyramidNetwork``
under ``neck`` and one detection head under ``heads.detect``. The heads wrap torchvision's
FCOS, RetinaNet and Faster R-CNN for their losses, anchors and post-processing; the images
reach them already resized and normalised by the task, so torchvision's own transform (which
would rescale to ``min_size=800``) is not used.

Targets: a list of ``{"boxes": (N, 4) xyxy, "labels": (N,) in 0..K-1}``, one per image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from zoo_core.anatomy import FeatureMaps, feature_maps
from zoo_core.errors import ZooError
from zoo_core.heads import strip_classifier
from zoo_core.models import create_model
from zoo_core.registry import Registry
from zoo_core.specs import TierSpec
from zoo_core.tensorops import ClassRows

DETECT = "detect"  # the head's name under ``heads``


@attrs.frozen
class DetectorOutput:
    """What a detector returns: named losses (when targets were given) and, in eval mode, detections."""

    losses: dict[str, torch.Tensor]
    detections: list[dict[str, torch.Tensor]]
    # the head's own weights for its components when the stage's loss_scales leave one out
    scales: Mapping[str, float] = attrs.field(factory=dict)
    # heads whose losses are sums: per loss_norm mode, what each component is divided by; the
    # torchvision heads normalise their own losses and report none
    normalisers: Mapping[str, Mapping[str, torch.Tensor]] = attrs.field(factory=dict)
    default_norm: tuple[str, ...] = ()


class _Width(nn.Module):
    """Stands in for the backbone torchvision's detector classes ask for at construction."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels


class FpnNeck(FeaturePyramidNetwork):
    """torchvision's FPN over the backbone's last ``levels`` maps, with P6/P7 or a max-pool level."""

    def __init__(
        self, channels: Sequence[int], strides: Sequence[int], *, out_channels: int = 256, levels: int | None = None, extra: str = "p6p7"
    ) -> None:
        levels = min(3, len(channels)) if levels is None else levels  # C3-C5, as torchvision's FCOS and RetinaNet
        if not 1 <= levels <= len(channels):
            raise ZooError(f"fpn neck: levels must be between 1 and {len(channels)} (the backbone's maps), got {levels}")
        if extra not in ("p6p7", "pool", "none"):
            raise ZooError(f"fpn neck: extra must be 'p6p7', 'pool' or 'none', got {extra!r}")
        extra_blocks = {"p6p7": LastLevelP6P7(out_channels, out_channels), "pool": LastLevelMaxPool(), "none": None}[extra]
        super().__init__(list(channels[-levels:]), out_channels, extra_blocks=extra_blocks)
        self.levels = levels
        self.out_channels = out_channels
        self.out_features = out_channels
        last = list(strides[-levels:])
        self.strides = tuple(last + [last[-1] * 2 ** (i + 1) for i in range({"p6p7": 2, "pool": 1, "none": 0}[extra])])
        # the names torchvision's FPN gives its outputs: the inputs' ("0", "1" …), then its extra levels
        self.output_names = tuple([str(i) for i in range(levels)] + {"p6p7": ["p6", "p7"], "pool": ["pool"], "none": []}[extra])

    def forward(self, maps: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:  # type: ignore[override]
        chosen = maps[-self.levels :]
        return super().forward(OrderedDict((str(i), level) for i, level in enumerate(chosen)))


def fpn_neck(maps: FeatureMaps, **options: Any) -> FpnNeck:
    """The ``fpn`` neck factory: it takes the backbone's :class:`~zoo_core.anatomy.FeatureMaps`."""
    return FpnNeck(maps.channels, maps.strides, **options)


def _image_list(size: tuple[int, int], features: list[torch.Tensor]) -> ImageList:
    """What torchvision's anchor generators and RPN read of the images: their count and size.

    The tensor is an expanded scalar (no memory): the heads also run on cached trunk features,
    without the images.
    """
    count = int(features[0].shape[0])
    placeholder = features[0].new_zeros(()).expand(count, 1, *size)
    return ImageList(placeholder, [tuple(size)] * count)


class _DenseHead:
    """FCOS and RetinaNet share this flow: head outputs, anchors, then loss and/or detections."""

    def _dense_forward(self, size: tuple[int, int], features: OrderedDict[str, torch.Tensor], targets: list[dict] | None) -> DetectorOutput:
        levels = list(features.values())
        image_list = _image_list(size, levels)
        head_outputs = self.head(levels)
        anchors = self.anchor_generator(image_list, levels)
        per_level = [level.size(2) * level.size(3) for level in levels]
        anchors_per_location = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [count * anchors_per_location for count in per_level]
        losses = self._losses(targets, head_outputs, anchors, per_level) if targets is not None else {}
        detections: list[dict[str, torch.Tensor]] = []
        if not self.training:
            split_outputs = {key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()}
            split_anchors = [list(anchor.split(per_level)) for anchor in anchors]
            detections = self.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
        return DetectorOutput(losses, detections)


class FcosHead(_DenseHead, FCOS):
    """torchvision's FCOS head, anchors (one point per location and level), loss and post-processing."""

    loss_names = ("classification", "bbox_regression", "bbox_ctrness")

    def __init__(
        self, in_channels: int, num_classes: int, *, strides: Sequence[int], num_convs: int = 4,
        score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
        topk_candidates: int = 1000, center_sampling_radius: float = 1.5,
    ) -> None:  # fmt: skip
        anchors = AnchorGenerator(tuple((int(s),) for s in strides), ((1.0,),) * len(strides))
        head = FCOSHead(in_channels, anchors.num_anchors_per_location()[0], num_classes, num_convs=num_convs)
        super().__init__(
            _Width(in_channels), num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=topk_candidates,
            center_sampling_radius=center_sampling_radius,
        )  # fmt: skip
        del self.backbone, self.transform  # the Detector owns the backbone; the task resizes and normalises

    def _losses(self, targets, head_outputs, anchors, per_level):
        return self.compute_loss(targets, head_outputs, anchors, per_level)

    def forward(self, size, features, targets=None) -> DetectorOutput:  # type: ignore[override]
        return self._dense_forward(size, features, targets)

    def class_rows(self, prefix: str) -> list[ClassRows]:
        logits = f"{prefix}head.classification_head.cls_logits"
        return [ClassRows(f"{logits}.weight"), ClassRows(f"{logits}.bias")]


class RetinaHead(_DenseHead, RetinaNet):
    """torchvision's RetinaNet head: ``anchor_sizes`` x 3 scales x 3 aspect ratios per location."""

    loss_names = ("classification", "bbox_regression")

    def __init__(
        self, in_channels: int, num_classes: int, *, strides: Sequence[int], anchor_scale: float = 4.0,
        score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100, topk_candidates: int = 1000,
    ) -> None:  # fmt: skip
        sizes = tuple(tuple(int(anchor_scale * s * 2 ** (i / 3)) for i in range(3)) for s in strides)  # torchvision's 2^(0, 1/3, 2/3)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        head = RetinaNetHead(in_channels, anchors.num_anchors_per_location()[0], num_classes)
        super().__init__(
            _Width(in_channels), num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=topk_candidates,
        )  # fmt: skip
        del self.backbone, self.transform

    def _losses(self, targets, head_outputs, anchors, per_level):
        return self.compute_loss(targets, head_outputs, anchors)

    def forward(self, size, features, targets=None) -> DetectorOutput:  # type: ignore[override]
        return self._dense_forward(size, features, targets)

    def class_rows(self, prefix: str) -> list[ClassRows]:
        logits = f"{prefix}head.classification_head.cls_logits"
        repeats = self.anchor_generator.num_anchors_per_location()[0]
        return [ClassRows(f"{logits}.weight", repeats=repeats), ClassRows(f"{logits}.bias", repeats=repeats)]


class FasterRcnnHead(nn.Module):
    """torchvision's Faster R-CNN: RPN and RoI heads. Labels shift by one (its class 0 is background)."""

    loss_names = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")

    def __init__(
        self, in_channels: int, num_classes: int, *, strides: Sequence[int], anchor_scale: float = 8.0,
        representation_size: int = 1024, score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
        **options: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        names = [str(i) for i in range(len(strides))]
        pooled = [name for name, stride in zip(names, strides) if stride <= 32] or names  # RoIs pool from the fine levels
        anchors = AnchorGenerator(tuple((int(anchor_scale * s),) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        built = FasterRCNN(
            _Width(in_channels), None, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(in_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            box_score_thresh=score_thresh, box_nms_thresh=nms_thresh, box_detections_per_img=detections_per_img, **options,
        )  # fmt: skip
        self.rpn, self.roi_heads = built.rpn, built.roi_heads

    def _run(self, image_list: ImageList, features, targets, *, training: bool):
        # torchvision computes these losses only in training mode; validation wants them with the
        # norms in eval mode, so the flag is set on these two modules alone (they hold no norm)
        was = self.rpn.training, self.roi_heads.training
        self.rpn.training = self.roi_heads.training = training
        try:
            proposals, rpn_losses = self.rpn(image_list, features, targets if training else None)
            detections, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets if training else None)
        finally:
            self.rpn.training, self.roi_heads.training = was
        return {**rpn_losses, **roi_losses}, detections

    def forward(self, size, features, targets=None) -> DetectorOutput:
        image_list = _image_list(size, list(features.values()))
        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            shifted = [{**target, "labels": target["labels"] + 1} for target in targets]
            losses, _ = self._run(image_list, features, shifted, training=True)
        detections: list[dict[str, torch.Tensor]] = []
        if not self.training:
            _, raw = self._run(image_list, features, None, training=False)
            detections = [{**found, "labels": found["labels"] - 1} for found in raw]
        return DetectorOutput(losses, detections)

    def class_rows(self, prefix: str) -> list[ClassRows]:
        predictor = f"{prefix}roi_heads.box_predictor"
        return [
            ClassRows(f"{predictor}.cls_score.weight", leading=1),
            ClassRows(f"{predictor}.cls_score.bias", leading=1),
            ClassRows(f"{predictor}.bbox_pred.weight", leading=4, width=4),
            ClassRows(f"{predictor}.bbox_pred.bias", leading=4, width=4),
        ]


def fcos_head(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    return FcosHead(in_channels, num_classes, **options)


def retinanet_head(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    return RetinaHead(in_channels, num_classes, **options)


def fasterrcnn_head(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    return FasterRcnnHead(in_channels, num_classes, **options)


class Detector(nn.Module):
    """``backbone`` (the classifier's own modules) -> ``neck`` (FPN) -> ``heads.detect``.

    ``forward(images, targets=None)`` returns a :class:`DetectorOutput`: the named losses when
    targets are given (in train or eval mode), and the detections in eval mode, as
    ``{"boxes", "scores", "labels"}`` per image in the input's pixels.
    """

    def __init__(self, backbone: nn.Module, maps: FeatureMaps, neck: FpnNeck, head: nn.Module, *, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict({DETECT: head})
        self.feature_maps = maps  # not a module: it calls the backbone's own modules
        self.num_classes = num_classes

    @property
    def loss_names(self) -> tuple[str, ...]:
        return tuple(self.heads[DETECT].loss_names)

    @property
    def loss_norm_modes(self) -> tuple[str, ...]:
        """The ``loss_norm`` modes the head takes; none for heads that average their own losses."""
        return tuple(getattr(self.heads[DETECT], "loss_norm_modes", ()))

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps the neck takes: what the feature cache stores."""
        return self.feature_maps(images)[-self.neck.levels :]

    def forward_heads(self, maps: list[torch.Tensor], targets: list[dict] | None = None, size: tuple[int, int] | None = None) -> DetectorOutput:
        """Neck and head on the backbone's maps; ``size`` is the input's (height, width)."""
        return self.heads[DETECT](tuple(size) if size is not None else self._size_of(maps[-self.neck.levels]), self.neck(maps), targets)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None, size: tuple[int, int] | None = None) -> DetectorOutput:
        """``size`` is ignored (the images give it): it is taken so that one call runs either this or,
        under the feature cache, :meth:`forward_heads` on cached maps."""
        return self.forward_heads(self.forward_features(images), targets, (int(images.shape[-2]), int(images.shape[-1])))

    def zoo_head_split(self) -> tuple[nn.Module, Any, Any]:
        """What trains over cached features, how it runs on them, and what the cache stores.

        A frozen neck (a heads-only stage) is cached with the backbone: the FPN's levels are
        stored and only the head runs on them. A neck that trains runs on the backbone's maps.
        """
        if not any(param.requires_grad for param in self.neck.parameters()):
            return self.heads, self._head_on_levels, self._levels
        return nn.ModuleDict({"neck": self.neck, "heads": self.heads}), self.forward_heads, self.forward_features

    def _levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.neck(self.forward_features(images)).values())

    def _head_on_levels(self, levels: list[torch.Tensor], targets: list[dict] | None = None, size: tuple[int, int] | None = None) -> DetectorOutput:
        features = OrderedDict(zip(self.neck.output_names, levels))
        return self.heads[DETECT](tuple(size) if size is not None else self._size_of(levels[0]), features, targets)

    def _size_of(self, finest: torch.Tensor) -> tuple[int, int]:
        """The input size a map implies: its grid times its stride."""
        return (int(finest.shape[-2]) * self.neck.strides[0], int(finest.shape[-1]) * self.neck.strides[0])

    def class_rows(self) -> list[ClassRows]:
        return self.heads[DETECT].class_rows(f"heads.{DETECT}.")


def build_detector(tier: TierSpec, *, registry: Registry, num_classes: int | None = None, pretrained_backbone: bool = False, **kwargs: Any) -> Detector:
    """A tier family builder: ``backbone`` from the registry, ``neck`` (fpn) and one detection head.

    ``heads = { detect = { kind = "fcos", options... } }``; ``neck = { kind = "fpn",
    out_channels = 256, levels = 3, extra = "p6p7" }`` (Faster R-CNN's default is 4 levels and a
    max-pool level).
    """
    classes = num_classes or tier.num_classes
    if classes is None:
        raise ZooError(f"{tier.name}: a detector needs a class count; pass num_classes=N (--num-classes N)")
    if len(tier.heads) != 1:
        raise ZooError(f"{tier.name}: a detector has one head (heads.{DETECT}), got {', '.join(tier.heads)}")
    head_spec = next(iter(tier.heads.values()))
    backbone_args = dict(tier.params.get("backbone_args", {}))
    backbone_args.update(kwargs)
    pretrained = pretrained_backbone or bool(tier.params.get("pretrained_backbone", False))
    backbone = create_model(tier.backbone, pretrained=pretrained, registry=registry, **backbone_args)
    strip_classifier(backbone, registry)
    maps = feature_maps(backbone, registry.plugins.hook, registry)
    neck_kind = tier.neck.kind if tier.neck is not None else "fpn"
    neck_options = dict(tier.neck.options) if tier.neck is not None else {}
    if head_spec.kind == "fasterrcnn":
        neck_options.setdefault("levels", min(4, len(maps.channels)))
        neck_options.setdefault("extra", "pool")
    neck = registry.factory("neck", neck_kind).load()(maps, **neck_options)
    head = registry.factory("head", head_spec.kind).load()(neck.out_channels, classes, strides=neck.strides, **head_spec.options)
    return Detector(backbone, maps, neck, head, num_classes=classes)
