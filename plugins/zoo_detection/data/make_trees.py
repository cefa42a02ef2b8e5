"""Rebuild ``trees/`` from the DeepForest package's sample data (run once; the result is committed).

    pip download --no-deps deepforest==2.1.0 && unzip -q deepforest-2.1.0-py3-none-any.whl 'deepforest/data/*'
    python make_trees.py deepforest/data trees

Train: 256-pixel tiles of ``2019_YELL_2_528000_4978000_image_crop2`` (Yellowstone, 574 crowns).
Val: 256-pixel tiles of ``2019_YELL_2_541000_4977000_image_crop`` (another Yellowstone plot,
279 crowns) and the whole of ``OSBS_029`` (Ordway-Swisher, Florida, 61 crowns). A crown cut by
a tile's edge is kept, clipped, when at least half of its box lies inside the tile.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from PIL import Image

TILE = 256
KEEP = 0.5  # share of a crown's box that must lie inside a tile


def crowns(xml: Path) -> list[tuple[float, float, float, float]]:
    found = []
    for box in ElementTree.parse(xml).getroot().iter("bndbox"):
        found.append(tuple(float(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax")))
    return found


def tiles(image: Image.Image, boxes, stem: str):
    width, height = image.size
    for top in range(0, height - TILE + 1, TILE):
        for left in range(0, width - TILE + 1, TILE):
            kept = []
            for x0, y0, x1, y1 in boxes:
                cx0, cy0, cx1, cy1 = max(x0, left), max(y0, top), min(x1, left + TILE), min(y1, top + TILE)
                if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < KEEP * (x1 - x0) * (y1 - y0):
                    continue
                kept.append((cx0 - left, cy0 - top, cx1 - left, cy1 - top))
            yield f"{stem}_{top}_{left}.jpg", image.crop((left, top, left + TILE, top + TILE)), kept


def write(folder: Path, items) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "Tree"}]}
    for image_id, (name, picture, boxes) in enumerate(items, start=1):
        picture.save(folder / name, quality=80)
        coco["images"].append({"id": image_id, "file_name": name, "width": picture.size[0], "height": picture.size[1]})
        for x0, y0, x1, y1 in boxes:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)],
                "area": round((x1 - x0) * (y1 - y0), 1), "iscrowd": 0,
            })  # fmt: skip
    (folder / "annotations.json").write_text(json.dumps(coco, indent=0))


def main(source: Path, out: Path) -> None:
    Image.MAX_IMAGE_PIXELS = None
    train_stem, val_stem = "2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop"
    train = list(tiles(Image.open(source / f"{train_stem}.png").convert("RGB"), crowns(source / f"{train_stem}.xml"), "yell_528000"))
    val = list(tiles(Image.open(source / f"{val_stem}.png").convert("RGB"), crowns(source / f"{val_stem}.xml"), "yell_541000"))
    val.append(("osbs_029.jpg", Image.open(source / "OSBS_029.png").convert("RGB"), crowns(source / "OSBS_029.xml")))
    write(out / "train", train)
    write(out / "val", val)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
