"""Boxes for new images, in the pixels of the image files, and the images with their boxes drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors

from zoo_core.errors import DataError

BATCH = 16


def _read(path: Path, channels: int) -> tv_tensors.Image:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as image:
            return tv_tensors.Image(TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB")))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc}); remove or replace it") from None


def _sample(image: tv_tensors.Image) -> dict[str, Any]:
    """An image as the training transform takes it: with (no) boxes and labels."""
    empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return {"image": image, "boxes": empty, "labels": torch.zeros(0, dtype=torch.long)}


def predict_boxes(loaded: Any, paths: Sequence[Path], transform: Any, *, threshold: float, top_k: int | None) -> list[dict[str, Any]]:
    size = loaded.input_config.size
    answers = []
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        images = [_read(path, loaded.input_config.channels) for path in chunk]
        inputs = torch.stack([transform(_sample(image))["image"].as_subclass(torch.Tensor) for image in images]).to(loaded.device)
        with torch.no_grad():
            detections = loaded.model(inputs).detections
        for path, image, found in zip(chunk, images, detections):
            height, width = int(image.shape[-2]), int(image.shape[-1])
            scale = size / max(height, width)  # the letterbox: input pixels per file pixel
            keep = found["scores"] >= threshold
            order = torch.argsort(found["scores"][keep], descending=True)[: top_k or None]
            boxes = (found["boxes"][keep][order].float().cpu() / scale).clamp(min=0)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
            answers.append({
                "image": str(path), "width": width, "height": height,
                "boxes": [
                    {"box": [round(float(v), 2) for v in box], "class": loaded.class_names[int(label)], "score": round(float(score), 4)}
                    for box, label, score in zip(boxes, found["labels"][keep][order].tolist(), found["scores"][keep][order].tolist())
                ],
            })  # fmt: skip
    return answers


def draw_boxes(answer: Mapping[str, Any], output: Path) -> Path:
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes

    from zoo_core.fileio import atomic_save_with

    image = _read(Path(answer["image"]), 3).as_subclass(torch.Tensor)
    found = answer["boxes"]
    if found:
        boxes = torch.tensor([item["box"] for item in found], dtype=torch.float32)
        labels = [f"{item['class']} {item['score']:.2f}" for item in found]
        image = draw_bounding_boxes(image, boxes, labels=labels, colors="red", width=2)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{Path(answer['image']).stem}.png"
    picture = TF.to_pil_image(image)
    atomic_save_with(target, lambda handle: picture.save(handle, format="PNG"))
    return target
