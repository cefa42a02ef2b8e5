"""MultiGridDet's head: a dense, anchor-based grid head of the YOLO family over the FPN's levels.

Each cell of each level predicts box offsets, an objectness score, which of the level's anchor
shapes fits best (the "anchor" prediction) and class scores. An object is assigned to one level
and one anchor, those whose shape overlaps its own most by IoL (intersection over the larger
area, MultiGridDet's matching, kinder than IoU to long thin boxes), and there to the cell that
holds its centre *and the cells around it* (``radius = 1``: the 3x3 neighbourhood), each of which
predicts the object's centre relative to itself: the multi-grid assignment. A cell claimed by
two objects keeps the smaller one.

Losses, each a sum over the batch (:meth:`MultiGridHead.loss` says over which cells):

* ``coord``: squared error of the centre offsets and log sizes, weighted ``2 - w*h/image`` (YOLOv3);
* ``object``: binary cross-entropy of objectness at assigned cells;
* ``no_object``: the same towards 0 at the other cells, except where the predicted box already
  overlaps an object by more than ``ignore_thresh`` IoU (YOLOv3's ignore mask);
* ``class``: binary cross-entropy of the class scores at assigned cells;
* ``anchor``: binary cross-entropy of the anchor prediction against the assigned anchor.

The stage's ``loss_norm`` divides them (see :data:`LOSS_NORM_MODES`); the default is ``batch``.
None of this is in torchvision, whose detection heads are FCOS, RetinaNet, SSD and the R-CNNs,
so it is written here on its ops (``box_iou``, ``batched_nms``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from zoo_core.errors import ZooError
from zoo_core.specs import LOSS_NORM_MODES
from zoo_core.tensorops import ClassRows

from .model import DetectorOutput

# the guide's loss scales (seed 002: "they match the pretrained model's training recipe")
DEFAULT_SCALES = {"coord": 5.0, "object": 1.0, "no_object": 0.5, "class": 1.0, "anchor": 1.0}
POSITIVE_COMPONENTS = ("coord", "object", "class", "anchor")  # sums over assigned cells
PRIOR = 0.01  # initial objectness and class probability (RetinaNet's prior), so new heads start quiet
MAX_LOG_SIZE = math.log(1000.0 / 16)  # torchvision's clamp on predicted log sizes


@attrs.frozen
class Assignment:
    """Which cells of one image predict which object: flat cell indices and what they must predict."""

    cells: torch.Tensor  # (P,) indices into the image's cells, all levels concatenated
    boxes: torch.Tensor  # (P,) index of the object each assigned cell predicts
    anchors: torch.Tensor  # (P,) the object's anchor on its level (0..A-1)
    offsets: torch.Tensor  # (P, 2) the object's centre, in cells, relative to each assigned cell's corner
    log_sizes: torch.Tensor  # (P, 2) log(width / anchor width), log(height / anchor height)


def iol(sizes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 2) box sizes against (M, 2) anchor sizes, both centred: intersection over the larger area."""
    inter = torch.min(sizes[:, None, 0], anchors[None, :, 0]) * torch.min(sizes[:, None, 1], anchors[None, :, 1])
    larger = torch.max((sizes[:, 0] * sizes[:, 1])[:, None], (anchors[:, 0] * anchors[:, 1])[None, :])
    return inter / larger.clamp(min=1e-9)


class MultiGridHead(nn.Module):
    """``--detector multigrid``: see the module docstring. Options are catalog ``heads.detect`` keys."""

    loss_names = ("coord", "object", "no_object", "class", "anchor")
    loss_norm_modes = LOSS_NORM_MODES
    default_scales = DEFAULT_SCALES

    def __init__(
        self, in_channels: int, num_classes: int, *, strides: Sequence[int], anchor_scale: float = 4.0,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), radius: int = 1, num_convs: int = 2, ignore_thresh: float = 0.5,
        score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100, topk_candidates: int = 1000,
    ) -> None:  # fmt: skip
        super().__init__()
        if radius < 0:
            raise ZooError(
                f"multigrid head: radius must be >= 0 (0: the centre cell only, 1: its 3x3 neighbourhood), got {radius}"
            )
        if not aspect_ratios or any(ratio <= 0 for ratio in aspect_ratios):
            raise ZooError(
                f"multigrid head: aspect_ratios must be positive height/width ratios, got {list(aspect_ratios)}"
            )
        self.num_classes, self.radius, self.strides = num_classes, int(radius), tuple(int(s) for s in strides)
        self.ignore_thresh, self.score_thresh, self.nms_thresh = ignore_thresh, score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        # anchor shapes (width, height) per level: anchor_scale strides across, at each aspect ratio
        shapes = [
            [(anchor_scale * s / math.sqrt(r), anchor_scale * s * math.sqrt(r)) for r in aspect_ratios]
            for s in self.strides
        ]
        self.register_buffer("anchor_sizes", torch.tensor(shapes, dtype=torch.float32), persistent=False)  # (L, A, 2)
        anchors = len(aspect_ratios)
        groups = math.gcd(32, in_channels)
        tower: list[nn.Module] = []
        for _ in range(num_convs):  # shared by the levels, as torchvision's RetinaNet and FCOS heads
            tower += [
                nn.Conv2d(in_channels, in_channels, 3, padding=1),
                nn.GroupNorm(groups, in_channels),
                nn.LeakyReLU(0.1),
            ]
        self.tower = nn.Sequential(*tower)
        self.box = nn.Conv2d(in_channels, 4, 1)
        self.objectness = nn.Conv2d(in_channels, 1, 1)
        self.anchor = nn.Conv2d(in_channels, anchors, 1)
        self.classes = nn.Conv2d(in_channels, num_classes, 1)
        for conv in (self.box, self.objectness, self.anchor, self.classes):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        prior = -math.log((1 - PRIOR) / PRIOR)
        nn.init.constant_(self.objectness.bias, prior)
        nn.init.constant_(self.classes.bias, prior)

    @property
    def anchors_per_level(self) -> int:
        return int(self.anchor_sizes.shape[1])

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self, size: tuple[int, int], features: OrderedDict[str, torch.Tensor], targets: list[dict] | None = None
    ) -> DetectorOutput:
        levels = list(features.values())
        if len(levels) != len(self.strides):
            raise ZooError(f"multigrid head: built for {len(self.strides)} levels, given {len(levels)}")
        raw = self._predict(levels)  # (B, N, 4 + 1 + A + K)
        grid = self._grid(levels, raw.device)
        losses: dict[str, torch.Tensor] = {}
        normalisers: dict[str, dict[str, torch.Tensor]] = {}
        if targets is not None:
            assignments = [self.assign(target["boxes"], grid, size) for target in targets]
            losses = self.loss(raw, targets, assignments, grid, size)
            normalisers = self._normalisers(raw, assignments)
        detections = [] if self.training else self.decode(raw, grid, size)
        return DetectorOutput(
            losses, detections, scales=DEFAULT_SCALES, normalisers=normalisers, default_norm=("batch",)
        )

    def _predict(self, levels: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for level in levels:
            hidden = self.tower(level)
            out = torch.cat(
                [self.box(hidden), self.objectness(hidden), self.anchor(hidden), self.classes(hidden)], dim=1
            )
            outputs.append(out.flatten(2).transpose(1, 2))  # (B, H*W, C), cells row by row
        return torch.cat(outputs, dim=1)

    def _grid(self, levels: list[torch.Tensor], device: torch.device) -> dict[str, Any]:
        """Per cell of all levels: its column, row, stride and level; and where each level starts."""
        columns, rows, strides, level_of, starts, shapes = [], [], [], [], [], []
        start = 0
        for index, (level, stride) in enumerate(zip(levels, self.strides)):
            height, width = int(level.shape[-2]), int(level.shape[-1])
            row, column = torch.meshgrid(
                torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
            )
            columns.append(column.flatten())
            rows.append(row.flatten())
            strides.append(torch.full((height * width,), float(stride), device=device))
            level_of.append(torch.full((height * width,), index, device=device, dtype=torch.long))
            starts.append(start)
            shapes.append((height, width))
            start += height * width
        return {
            "columns": torch.cat(columns).float(), "rows": torch.cat(rows).float(), "strides": torch.cat(strides),
            "levels": torch.cat(level_of), "starts": starts, "shapes": shapes, "cells": start,
        }  # fmt: skip

    # -- assignment -------------------------------------------------------------------------------

    def assign(self, boxes: torch.Tensor, grid: dict[str, Any], size: tuple[int, int]) -> Assignment:
        """The multi-grid assignment of one image's ``(M, 4)`` xyxy boxes (input pixels)."""
        device = boxes.device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if boxes.numel() == 0:
            return Assignment(empty, empty, empty, boxes.new_zeros(0, 2), boxes.new_zeros(0, 2))
        sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        anchors = self.anchor_sizes.to(device)
        per_level = anchors.shape[1]
        best = iol(sizes, anchors.reshape(-1, 2)).argmax(dim=1)  # (M,) over all levels' anchors
        level, anchor = best // per_level, best % per_level
        cells, owners, anchor_ids, offsets = [], [], [], []
        span = torch.arange(-self.radius, self.radius + 1, device=device)
        for box in range(boxes.shape[0]):
            index = int(level[box])
            stride = float(self.strides[index])
            height, width = grid["shapes"][index]
            centre = centres[box] / stride  # in cells: (x, y)
            column, row = torch.floor(centre).long()
            rows = (row.clamp(0, height - 1) + span).clamp(0, height - 1).unique()
            columns = (column.clamp(0, width - 1) + span).clamp(0, width - 1).unique()
            row_grid, column_grid = torch.meshgrid(rows, columns, indexing="ij")
            row_grid, column_grid = row_grid.flatten(), column_grid.flatten()
            cells.append(grid["starts"][index] + row_grid * width + column_grid)
            owners.append(torch.full_like(row_grid, box))
            anchor_ids.append(torch.full_like(row_grid, int(anchor[box])))
            offsets.append(torch.stack([centre[0] - column_grid, centre[1] - row_grid], dim=1))
        cells_t, owners_t = torch.cat(cells), torch.cat(owners)
        anchors_t, offsets_t = torch.cat(anchor_ids), torch.cat(offsets)
        # a cell two objects claim keeps the smaller (YOLO's habit: large objects have more cells)
        area = sizes[:, 0] * sizes[:, 1]
        rank = torch.empty_like(area, dtype=torch.long)
        rank[torch.argsort(area, stable=True)] = torch.arange(len(area), device=device)
        winner = torch.full((grid["cells"],), len(area), dtype=torch.long, device=device)
        winner.scatter_reduce_(0, cells_t, rank[owners_t], reduce="amin")
        keep = winner[cells_t] == rank[owners_t]
        cells_t, owners_t, anchors_t, offsets_t = cells_t[keep], owners_t[keep], anchors_t[keep], offsets_t[keep]
        chosen = anchors[level[owners_t], anchors_t]
        log_sizes = torch.log(sizes[owners_t] / chosen)
        return Assignment(cells_t, owners_t, anchors_t, offsets_t, log_sizes)

    # -- loss -----------------------------------------------------------------------------------

    def _offsets(self, raw_xy: torch.Tensor) -> torch.Tensor:
        """Predicted centre offsets, in cells: a neighbour's object centre lies up to ``radius`` cells away."""
        return (2 * self.radius + 1) * torch.sigmoid(raw_xy) - self.radius

    def loss(
        self,
        raw: torch.Tensor,
        targets: list[dict],
        assignments: list[Assignment],
        grid: dict[str, Any],
        size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """The five components, each summed over the batch (before ``loss_norm``)."""
        anchors, classes = self.anchors_per_level, self.num_classes
        image_area = float(size[0] * size[1])
        total = {name: raw.new_zeros(()) for name in self.loss_names}
        predicted = self._boxes(raw.detach(), grid).float()
        for image, (target, found) in enumerate(zip(targets, assignments)):
            out = raw[image].float()
            objectness = out[:, 4]
            negative = torch.ones_like(objectness, dtype=torch.bool)
            if found.cells.numel():
                cells = out[found.cells]
                boxes = target["boxes"][found.boxes].float()
                weight = 2 - (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / image_area
                error = (self._offsets(cells[:, 0:2]) - found.offsets).pow(2).sum(1) + (
                    cells[:, 2:4] - found.log_sizes
                ).pow(2).sum(1)
                total["coord"] = total["coord"] + (weight * error).sum()
                total["object"] = total["object"] + F.binary_cross_entropy_with_logits(
                    cells[:, 4], torch.ones_like(cells[:, 4]), reduction="sum"
                )
                anchor_target = F.one_hot(found.anchors, anchors).to(cells.dtype)
                total["anchor"] = total["anchor"] + F.binary_cross_entropy_with_logits(
                    cells[:, 5 : 5 + anchors], anchor_target, reduction="sum"
                )
                class_target = F.one_hot(target["labels"][found.boxes].long(), classes).to(cells.dtype)
                total["class"] = total["class"] + F.binary_cross_entropy_with_logits(
                    cells[:, 5 + anchors :], class_target, reduction="sum"
                )
                negative[found.cells] = False
            if target["boxes"].numel():  # cells already predicting an object well are not told "no object"
                negative &= box_iou(predicted[image], target["boxes"].float()).amax(dim=1) <= self.ignore_thresh
            total["no_object"] = total["no_object"] + F.binary_cross_entropy_with_logits(
                objectness[negative], torch.zeros_like(objectness[negative]), reduction="sum"
            )
        return total

    def _normalisers(self, raw: torch.Tensor, assignments: list[Assignment]) -> dict[str, dict[str, torch.Tensor]]:
        """What each ``loss_norm`` mode divides each component by; the modes a stage lists multiply.

        ``batch``: the images. ``positives``: the assigned cells per image (so ``["batch",
        "positives"]`` divides the assigned cells' components by the batch's assigned cells).
        ``grid``: every cell of every image, a per-cell mean.
        """
        images = raw.new_tensor(float(raw.shape[0]))
        positives = raw.new_tensor(float(max(1, sum(int(found.cells.numel()) for found in assignments))))
        cells = images * raw.shape[1]
        one = raw.new_ones(())
        return {
            "batch": {name: images for name in self.loss_names},
            "positives": {
                name: (positives / images if name in POSITIVE_COMPONENTS else one) for name in self.loss_names
            },
            "grid": {name: cells for name in self.loss_names},
        }

    # -- decoding -------------------------------------------------------------------------------

    def _boxes(self, raw: torch.Tensor, grid: dict[str, Any]) -> torch.Tensor:
        """(B, N, 4) xyxy boxes in input pixels, each cell with the anchor it predicts fits best."""
        anchors = self.anchor_sizes.to(raw.device)
        best = raw[..., 5 : 5 + self.anchors_per_level].argmax(dim=-1)  # (B, N)
        shape = anchors[grid["levels"].unsqueeze(0).expand_as(best), best]  # (B, N, 2)
        offsets = self._offsets(raw[..., 0:2])
        stride = grid["strides"][None, :, None]
        centres = (torch.stack([grid["columns"], grid["rows"]], dim=-1)[None] + offsets) * stride
        sizes = torch.exp(raw[..., 2:4].clamp(max=MAX_LOG_SIZE)) * shape
        return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)

    def decode(self, raw: torch.Tensor, grid: dict[str, Any], size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Scores (objectness x class), boxes clipped to the input, per-class NMS."""
        raw = raw.float()
        boxes = self._boxes(raw, grid)
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, size[1])
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, size[0])
        scores = torch.sigmoid(raw[..., 4:5]) * torch.sigmoid(raw[..., 5 + self.anchors_per_level :])  # (B, N, K)
        detections = []
        for image in range(raw.shape[0]):
            flat = scores[image].flatten()
            keep = torch.nonzero(flat > self.score_thresh).squeeze(1)
            if keep.numel() > self.topk_candidates:
                keep = keep[flat[keep].topk(self.topk_candidates).indices]
            cells, labels = keep // self.num_classes, keep % self.num_classes
            chosen, chosen_scores = boxes[image][cells], flat[keep]
            kept = batched_nms(chosen, chosen_scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": chosen[kept], "scores": chosen_scores[kept], "labels": labels[kept]})
        return detections

    def class_rows(self, prefix: str) -> list[ClassRows]:
        return [ClassRows(f"{prefix}classes.weight"), ClassRows(f"{prefix}classes.bias")]


def multigrid_head(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    return MultiGridHead(in_channels, num_classes, **options)
