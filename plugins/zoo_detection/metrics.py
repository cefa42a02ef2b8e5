"""Detection metrics: COCO mAP through torchmetrics (faster-coco-eval backend), and precision,
recall and F1 at IoU 0.5 and a score threshold.

Boxes are compared in the image files' pixels (detections are mapped back from the letterboxed
input), so ``map_small``/``map_medium``/``map_large`` use COCO's area ranges as COCO defines them.
Ground truth marked ``iscrowd`` is evaluated as COCO does: a detection matching it is neither a
true nor a false positive.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_iou

MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
MATCH_IOU = 0.5


def detections_in_file_pixels(detections: list[dict[str, torch.Tensor]], scales: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": found["boxes"].detach().float().cpu() / float(scale), "scores": found["scores"].detach().float().cpu(),
         "labels": found["labels"].detach().cpu()}
        for found, scale in zip(detections, scales)
    ]  # fmt: skip


class ThresholdCounts:
    """True positives, false positives and misses at IoU 0.5 over detections scoring ``threshold`` or more.

    Per image and class, detections are matched greedily by score to the unmatched true box
    they overlap most (COCO's rule); a detection on a crowd region is ignored.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.true_positives = self.false_positives = self.misses = 0

    def update(self, found: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> None:
        keep = found["scores"] >= self.threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        crowd = truth["iscrowd"].bool()
        for label in torch.unique(torch.cat([labels, truth["labels"]])):
            mine = labels == label
            order = torch.argsort(scores[mine], descending=True)
            predicted = boxes[mine][order]
            real = (truth["labels"] == label) & ~crowd
            crowds = (truth["labels"] == label) & crowd
            real_boxes, crowd_boxes = truth["boxes"][real], truth["boxes"][crowds]
            taken = torch.zeros(len(real_boxes), dtype=torch.bool)
            overlaps = box_iou(predicted, real_boxes) if len(real_boxes) and len(predicted) else None
            for index in range(len(predicted)):
                if overlaps is not None:
                    candidates = overlaps[index].masked_fill(taken, -1.0)
                    best = int(candidates.argmax())
                    if candidates[best] >= MATCH_IOU:
                        taken[best] = True
                        self.true_positives += 1
                        continue
                if len(crowd_boxes) and bool((box_iou(predicted[index : index + 1], crowd_boxes) >= MATCH_IOU).any()):
                    continue
                self.false_positives += 1
            self.misses += int((~taken).sum())

    def compute(self) -> dict[str, float]:
        found = self.true_positives + self.false_positives
        real = self.true_positives + self.misses
        precision = self.true_positives / found if found else 0.0
        recall = self.true_positives / real if real else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


class DetectionMetrics:
    """``map`` … ``mar_100`` (torchmetrics' MeanAveragePrecision) and ``precision``/``recall``/``f1``."""

    def __init__(self, threshold: float = 0.5) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        # the engine evaluates on rank 0 alone: a metric that gathered across ranks would wait forever
        self.average_precision = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", sync_on_compute=False)
        self.counts = ThresholdCounts(threshold)

    def update(self, outputs: Any, batch: Any) -> None:
        found = detections_in_file_pixels(outputs.detections, batch.scales)
        truth = [{key: value.cpu() for key, value in real.items()} for real in batch.truth]
        self.average_precision.update(found, truth)
        for mine, real in zip(found, truth):
            self.counts.update(mine, real)

    def compute(self) -> dict[str, float]:
        computed = self.average_precision.compute()
        result = {key: float(computed[key]) for key in MAP_KEYS}
        result.update(self.counts.compute())
        return result
