"""Detection samples and batches: box-correct transforms (torchvision v2 with ``tv_tensors``),
letterboxing to the model's input size, and batch-level mosaic and mixup.

Per image, in order: ``hflip`` (probability), ``scale_jitter`` (v2's ``ScaleJitter`` to a
random share of the input size, then a random crop or padding back to it), else a letterbox
(the longer side to the input size, padded at the bottom and right, so boxes only scale);
boxes left without area are removed (v2's ``SanitizeBoundingBoxes``). Per batch: ``mosaic``
and ``mixup`` probabilities, written here because v2's MixUp and CutMix refuse boxes.

Images are decoded when an item is read, never all held (COCO-sized sets do not fit in memory),
unless a bounded shared cache is given (``--cache-images``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from zoo_core.errors import DataError
from zoo_core.paths import display
from zoo_core.specs import InputConfig

from .coco import ImageRecord

MIN_BOX = 1.0  # pixels: a box narrower or lower than this after a transform is dropped


@attrs.frozen
class DetectionBatch:
    images: torch.Tensor  # (B, C, S, S), normalised
    targets: list[dict[str, torch.Tensor]]  # what the loss sees: boxes (input pixels) and labels, crowds left out
    truth: list[dict[str, torch.Tensor]]  # what the metrics see: boxes in the image file's pixels, with iscrowd and area
    scales: torch.Tensor  # (B,) input pixels per file pixel (letterbox), to map detections back
    image_ids: tuple[int, ...]
    size: tuple[int, int]  # the input's (height, width); ``images`` may be cached trunk maps instead

    def __len__(self) -> int:
        return len(self.targets)


class Letterbox(v2.Transform):
    """The longer side to ``size`` (aspect kept), padded to ``size`` x ``size`` at the bottom and right."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.size / max(height, width)
        resized = (max(1, round(height * scale)), max(1, round(width * scale)))
        return {"resized": resized, "padding": [0, 0, self.size - resized[1], self.size - resized[0]]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes)):
            inpt = TF.resize(inpt, list(params["resized"]), antialias=True)
            return TF.pad(inpt, params["padding"], fill=0)
        return inpt


def scale_range(value: Any) -> tuple[float, float]:
    """``scale_jitter = 0.3`` means (0.7, 1.3); ``[0.5, 1.5]`` is the range itself."""
    if isinstance(value, (list, tuple)):
        low, high = (float(v) for v in value)
    else:
        low, high = 1.0 - float(value), 1.0 + float(value)
    if not 0 < low <= high:
        raise DataError(f"augment.scale_jitter: the scale range must be positive and ordered, got {value!r}")
    return low, high


def sample_transform(config: InputConfig, augment: Mapping[str, Any]) -> v2.Transform:
    """One image and its boxes: augmentation (training only), input size, float, normalisation."""
    steps: list[Any] = []
    if augment.get("hflip"):
        steps.append(v2.RandomHorizontalFlip(float(augment["hflip"])))
    if augment.get("scale_jitter"):
        steps += [
            v2.ScaleJitter((config.size, config.size), scale_range=scale_range(augment["scale_jitter"]), antialias=True),
            v2.RandomCrop(config.size, pad_if_needed=True, fill=0),
        ]
    else:
        steps.append(Letterbox(config.size))
    steps += [
        v2.SanitizeBoundingBoxes(min_size=MIN_BOX),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(config.mean), list(config.std)),
    ]
    return v2.Compose(steps)


def decode(record: ImageRecord, channels: int) -> tv_tensors.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(record.path) as image:
            size = image.size
            tensor = TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{display(record.path)} (image {record.image_id} in {record.source}): cannot read this image ({exc}); replace it") from None
    if size != (record.width, record.height):
        raise DataError(
            f"{display(record.path)} (image {record.image_id} in {record.source}): the file is {size[0]}x{size[1]} but the "
            f"annotations say {record.width}x{record.height}; fix 'width' and 'height'"
        )
    return tv_tensors.Image(tensor)


class DetectionDataset:
    """Annotated images, decoded on access, with their boxes transformed alongside.

    ``cache`` (a :class:`~zoo_core.imagecache.SharedImageCache`, ``--cache-images``) keeps decoded
    images for all workers at once, up to its size; without one nothing is kept.
    """

    def __init__(self, records: Sequence[ImageRecord], config: InputConfig, augment: Mapping[str, Any], cache: Any = None) -> None:
        self.records = list(records)
        self.config = config
        self.transform = sample_transform(config, augment)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tv_tensors.Image:
        cached = self.cache.get(index) if self.cache is not None else None
        if cached is not None:
            return tv_tensors.Image(cached)
        image = decode(self.records[index], self.config.channels)
        if self.cache is not None:
            self.cache.put(index, image.as_subclass(torch.Tensor))
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], ImageRecord]:
        record = self.records[index]
        image = self._load(index)
        sample = self.transform({"image": image, **self._boxes(record)})
        return sample["image"].as_subclass(torch.Tensor), self._target(sample), record

    @staticmethod
    def _boxes(record: ImageRecord) -> dict[str, Any]:
        kept = ~record.crowd  # crowd regions are not objects to learn; COCO evaluation ignores matches to them
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes[kept]), format="XYXY", canvas_size=(record.height, record.width))
        return {"boxes": boxes, "labels": torch.from_numpy(record.labels[kept])}

    @staticmethod
    def _target(sample: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"boxes": sample["boxes"].as_subclass(torch.Tensor).float(), "labels": sample["labels"]}

    def target(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index``'s boxes as ``__getitem__`` gives them, without decoding its image.

        Only for deterministic transforms (the feature cache's case): the same steps run on the
        boxes with a blank one-channel stand-in for the image (v2 would take the labels for one).
        """
        record = self.records[index]
        blank = tv_tensors.Image(torch.zeros((), dtype=torch.uint8).expand(1, record.height, record.width))
        return self._target(self.transform({"image": blank, **self._boxes(record)}))


def truth_of(record: ImageRecord) -> dict[str, torch.Tensor]:
    """A record's boxes as the metrics take them: the file's pixels, crowds flagged, COCO areas."""
    return {
        "boxes": torch.from_numpy(record.boxes),
        "labels": torch.from_numpy(record.labels),
        "iscrowd": torch.from_numpy(record.crowd.astype("int64")),
        "area": torch.from_numpy(record.area),
    }


def letterbox_scale(record: ImageRecord, size: int) -> float:
    return size / max(record.width, record.height)


def batch_of(images: Any, targets: list[dict[str, torch.Tensor]], records: Sequence[ImageRecord], size: int) -> DetectionBatch:
    return DetectionBatch(
        images,
        targets,
        [truth_of(record) for record in records],
        torch.tensor([letterbox_scale(record, size) for record in records], dtype=torch.float32),
        tuple(record.image_id for record in records),
        (size, size),
    )


def collate(items: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor], ImageRecord]]) -> DetectionBatch:
    images = torch.stack([item[0] for item in items])
    return batch_of(images, [item[1] for item in items], [item[2] for item in items], int(images.shape[-1]))


def cached_batch(dataset: DetectionDataset, indices: Sequence[int], maps: list[torch.Tensor]) -> DetectionBatch:
    """A batch over cached backbone maps: targets from the annotations, no image decoded."""
    records = [dataset.records[i] for i in indices]
    return batch_of(maps, [dataset.target(i) for i in indices], records, dataset.config.size)


def _keep_boxes(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX)
    return {"boxes": boxes[keep], "labels": target["labels"][keep]}


def mosaic(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    """Each image with three others of the batch, each at half size in one quadrant; boxes follow."""
    size, _, height, width = images.shape
    half_h, half_w = height // 2, width // 2
    orders = [torch.arange(size)] + [torch.randperm(size, generator=generator) for _ in range(3)]
    offsets = [(0, 0), (half_w, 0), (0, half_h), (half_w, half_h)]
    tiles = [F.interpolate(images[order.to(images.device)], size=(half_h, half_w), mode="bilinear", align_corners=False) for order in orders]
    mosaic_images = images.new_zeros(images.shape)
    for tile, (dx, dy) in zip(tiles, offsets):
        mosaic_images[:, :, dy : dy + half_h, dx : dx + half_w] = tile
    scale = torch.tensor([half_w / width, half_h / height, half_w / width, half_h / height])
    mixed = []
    for i in range(size):
        boxes, labels = [], []
        for order, (dx, dy) in zip(orders, offsets):
            source = targets[int(order[i])]
            shift = torch.tensor([dx, dy, dx, dy], dtype=source["boxes"].dtype, device=source["boxes"].device)
            boxes.append(source["boxes"] * scale.to(source["boxes"]) + shift)
            labels.append(source["labels"])
        mixed.append(_keep_boxes({"boxes": torch.cat(boxes), "labels": torch.cat(labels)}))
    return mosaic_images, mixed


def mixup(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], generator: torch.Generator, alpha: float) -> tuple[torch.Tensor, list[dict]]:
    """Each image blended with another of the batch; the boxes of both are kept."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 0.5
    lam = max(lam, 1 - lam)
    order = torch.randperm(images.shape[0], generator=generator)
    blended = lam * images + (1 - lam) * images[order.to(images.device)]
    mixed = [
        {"boxes": torch.cat([target["boxes"], targets[int(j)]["boxes"]]), "labels": torch.cat([target["labels"], targets[int(j)]["labels"]])}
        for target, j in zip(targets, order)
    ]
    return blended, mixed
