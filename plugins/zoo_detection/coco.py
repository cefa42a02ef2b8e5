"""Reading COCO-format detection data, checked once, with one line per problem that names it.

Layouts (first match wins):

* ``DATA/train/annotations.json`` and ``DATA/val/annotations.json``; each image's
  ``file_name`` is relative to the annotation file's folder or its ``images/`` subfolder;
* COCO 2017: ``DATA/annotations/instances_{train,val}2017.json``, images in ``DATA/{train,val}2017/``;
* one annotation file (``DATA/annotations.json``, or ``DATA/train/annotations.json`` without a
  val), split by a seeded fraction of the images.

Each file is parsed once; of each image only the header is read here (its size is checked
against the annotations); pixels are decoded when a batch needs them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from zoo_core.errors import DataError
from zoo_core.paths import display

BOX_TOLERANCE = 1.0  # pixels a box may reach past its image (rounding in exported annotations); clipped


@attrs.frozen(eq=False)
class ImageRecord:
    """One annotated image: its boxes (xyxy, pixels of the file), class indices, crowd flags and areas."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64, indices into the class names
    crowd: np.ndarray  # (N,) bool
    area: np.ndarray  # (N,) float32, COCO's area (segmentation area when given)
    source: str  # the annotation file, for messages


@attrs.frozen
class CocoSplit:
    categories: tuple[tuple[int, str], ...]  # (category id, name) in the file's order
    images: tuple[ImageRecord, ...]


def find_annotations(root: Path) -> tuple[Path, Path | None, str] | None:
    """``(train file, val file or None, layout)`` for a data folder, or ``None`` when it holds no COCO file."""
    if (root / "train" / "annotations.json").is_file():
        val = root / "val" / "annotations.json"
        return root / "train" / "annotations.json", val if val.is_file() else None, "train/ and val/ annotations.json"
    coco = root / "annotations"
    if (coco / "instances_train2017.json").is_file():
        val = coco / "instances_val2017.json"
        return coco / "instances_train2017.json", val if val.is_file() else None, "COCO 2017 annotations/"
    if (root / "annotations.json").is_file():
        return root / "annotations.json", None, "one annotations.json"
    return None


def _image_folder(annotation_file: Path) -> list[Path]:
    """Where an annotation file's ``file_name`` values are looked up, in order."""
    folder = annotation_file.parent
    if folder.name == "annotations" and annotation_file.name.startswith("instances_"):
        split = annotation_file.stem.removeprefix("instances_")  # train2017
        return [folder.parent / split, folder.parent / "images" / split]
    return [folder, folder / "images"]


def _load_json(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{display(path)}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); export the annotations again") from None
    except OSError as exc:
        raise DataError(f"{display(path)}: cannot read it ({exc.strerror})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise DataError(f"{display(path)}: not a COCO annotation file; it needs 'images', 'annotations' and 'categories' lists")
    return data


def _check_header(path: Path, image_id: int, width: int, height: int, where: str) -> None:
    """Open the image's header (not its pixels): unreadable files and wrong sizes fail before training."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{display(path)} (image {image_id} in {where}): cannot read this image ({exc}); replace it") from None
    if size != (width, height):
        raise DataError(
            f"{display(path)} (image {image_id} in {where}): the file is {size[0]}x{size[1]} but the annotations say "
            f"{width}x{height}; fix 'width' and 'height'"
        )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def read_split(path: Path, *, keep: Sequence[str] | None = None) -> CocoSplit:
    """Read one annotation file; ``keep`` (class names) drops every other category's boxes."""
    data = _load_json(path)
    where = display(path)
    categories: list[tuple[int, str]] = []
    for entry in data["categories"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not isinstance(entry.get("name"), str):
            raise DataError(f"{where}: a category needs an integer 'id' and a 'name', got {entry!r}")
        categories.append((entry["id"], entry["name"]))
    names = [name for _, name in categories]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{where}: category name '{duplicate}' is used twice; give each category its own name")
    by_id = dict(categories)
    kept = list(keep) if keep is not None else names
    index = {name: i for i, name in enumerate(kept)}
    folders = _image_folder(path)
    images: dict[int, dict[str, Any]] = {}
    for entry in data["images"]:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(image_id, int):
            raise DataError(f"{where}: an image needs an integer 'id', got {entry!r}")
        if image_id in images:
            raise DataError(f"{where}: image id {image_id} appears twice; give each image its own id")
        file_name, width, height = entry.get("file_name"), entry.get("width"), entry.get("height")
        if not isinstance(file_name, str) or not (isinstance(width, int) and width > 0 and isinstance(height, int) and height > 0):
            raise DataError(f"{where}: image {image_id} needs 'file_name', and 'width' and 'height' > 0")
        found = next((folder / file_name for folder in folders if (folder / file_name).is_file()), None)
        if found is None:
            looked = " or ".join(display(folder / file_name) for folder in folders)
            raise DataError(f"{where}: image {image_id}: file not found ({looked}); add it or remove the image from the file")
        _check_header(found, image_id, width, height, where)
        images[image_id] = {"path": found, "width": width, "height": height, "boxes": [], "labels": [], "crowd": [], "area": []}
    for entry in data["annotations"]:
        _add_annotation(entry, images, by_id, index, where)
    records = tuple(
        ImageRecord(
            image_id, info["path"], info["width"], info["height"],
            np.asarray(info["boxes"], dtype=np.float32).reshape(-1, 4), np.asarray(info["labels"], dtype=np.int64),
            np.asarray(info["crowd"], dtype=bool), np.asarray(info["area"], dtype=np.float32), where,
        )
        for image_id, info in images.items()
    )  # fmt: skip
    return CocoSplit(tuple(categories), records)


def _add_annotation(entry: Any, images: dict[int, dict[str, Any]], by_id: Mapping[int, str], index: Mapping[str, int], where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: an annotation must be an object, got {entry!r}")
    annotation_id = entry.get("id", "?")
    image_id = entry.get("image_id")
    image = images.get(image_id) if isinstance(image_id, int) else None
    if image is None:
        raise DataError(f"{where}: annotation {annotation_id}: image id {image_id!r} is not in 'images'; fix its image_id")
    category = entry.get("category_id")
    if category not in by_id:
        raise DataError(
            f"{where}: annotation {annotation_id} (image {image_id}): unknown category_id {category!r}; "
            f"the file's categories are {', '.join(str(key) for key in by_id)}"
        )
    box = entry.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(value) for value in box)):
        raise DataError(f"{where}: annotation {annotation_id} (image {image_id}): 'bbox' must be [x, y, width, height], got {box!r}")
    x, y, w, h = (float(value) for value in box)
    if w <= 0 or h <= 0:
        raise DataError(
            f"{where}: annotation {annotation_id} (image {image_id}): box width and height must be > 0, got {box}; fix or remove it"
        )
    width, height = image["width"], image["height"]
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        raise DataError(
            f"{where}: annotation {annotation_id} (image {image_id}): box {box} lies outside its {width}x{height} image; fix or remove it"
        )
    name = by_id[category]
    if name not in index:
        return  # a category the run does not keep (--classes)
    x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    image["boxes"].append((x1, y1, x2, y2))
    image["labels"].append(index[name])
    image["crowd"].append(bool(entry.get("iscrowd", 0)))
    area = entry.get("area")
    image["area"].append(float(area) if _number(area) and area > 0 else (x2 - x1) * (y2 - y1))


def check_classes(wanted: Sequence[str], available: Sequence[str], where: str) -> None:
    if not wanted:
        raise DataError("--classes: name at least one class")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"--classes: '{next(name for name in wanted if list(wanted).count(name) > 1)}' is given twice")
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DataError(f"--classes: {where} has no class '{missing[0]}' (its classes: {', '.join(available)}); pick from those")


def seeded_split(records: Sequence[ImageRecord], fraction: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A seeded share of the images for validation (at least one, when there are two or more)."""
    order = list(records)
    random.Random(seed).shuffle(order)
    count = max(1, round(len(order) * fraction)) if len(order) > 1 else 0
    val = sorted(order[:count], key=lambda record: record.image_id)
    train = sorted(order[count:], key=lambda record: record.image_id)
    return train, val
