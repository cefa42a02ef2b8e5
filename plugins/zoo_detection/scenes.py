"""Composed detection scenes: the bundled real handwritten digits pasted onto blank canvases.

Each scene is a ``size`` x ``size`` grey image holding one to ``most`` digits, each scaled up
to ``digit`` pixels at a random free place, with its box and its digit as the category. The
scenes are composed (the digits are real, their arrangement is not); they give a multi-class
COCO-format set without a download, for pretraining a detector and for tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo_core.demo import load_digits
from zoo_core.fileio import atomic_write_text


def _free_place(rng: np.random.Generator, taken: list[tuple[int, int, int, int]], size: int, side: int) -> tuple[int, int] | None:
    for _ in range(50):
        x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        if all(x + side <= a or a + c <= x or y + side <= b or b + d <= y for a, b, c, d in taken):
            return x, y
    return None


def write_digit_scenes(
    folder: Path,
    count: int,
    *,
    seed: int = 0,
    size: int = 96,
    digit: int = 24,
    most: int = 3,
    digits: Sequence[int] = tuple(range(10)),
) -> Path:
    """Write ``count`` scenes and ``folder/annotations.json``; return the annotation file."""
    from PIL import Image

    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    pools = {d: np.flatnonzero(labels == d) for d in digits}
    folder.mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": d + 1, "name": str(d)} for d in digits]}
    for index in range(count):
        canvas = np.zeros((size, size), dtype=np.uint8)
        taken: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, most + 1))):
            place = _free_place(rng, taken, size, digit)
            if place is None:
                continue
            value = int(rng.choice(list(digits)))
            pixels = np.clip(images[int(rng.choice(pools[value]))].astype(np.int32) * 16, 0, 255).astype(np.uint8)
            tile = np.asarray(Image.fromarray(pixels, mode="L").resize((digit, digit), Image.BILINEAR))
            x, y = place
            canvas[y : y + digit, x : x + digit] = np.maximum(canvas[y : y + digit, x : x + digit], tile)
            taken.append((x, y, digit, digit))
            rows, cols = np.nonzero(tile > 24)  # the box hugs the ink, as an annotator would draw it
            x0, y0, x1, y1 = x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": index + 1, "category_id": value + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
        name = f"{index:04d}.png"
        Image.fromarray(canvas, mode="L").convert("RGB").save(folder / name)
        coco["images"].append({"id": index + 1, "file_name": name, "width": size, "height": size})
    target = folder / "annotations.json"
    atomic_write_text(target, json.dumps(coco))
    return target
