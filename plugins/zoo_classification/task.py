"""Image classification: labelled images, transforms from the backbone's config, cross-entropy.

Data is read by a dataset reader (:mod:`.readers`; ``--data-format`` picks one, else the
layout is recognised): image folders, Tiny ImageNet, ImageNet, CSV/TSV lists. A layout
without a val part is split into train and val by a seeded, per-class fraction.

Stage ``augment`` settings: ``hflip`` (probability), ``crop_scale`` (smallest area kept by a
random resized crop), ``mixup`` and ``mosaic`` (probability that a batch is mixed; mosaic
tiles four images into one with area-weighted labels), ``mixup_alpha``.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from zoo_core.datasets import DatasetReader, pick_reader
from zoo_core.engine.task import TaskData
from zoo_core.errors import DataError, PluginError, RunError
from zoo_core.specs import InputConfig, Recipe

from .readers import ClassificationLayout, builtin_readers

log = logging.getLogger(__name__)


@attrs.frozen
class Batch:
    inputs: Any  # (B, C, H, W) float tensor
    targets: Any  # (B,) class indices, or (B, K) probabilities after mixing
    labels: Any  # (B,) the unmixed class indices, for metrics
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _warn_missing(root: Path, layout: ClassificationLayout, class_names: Sequence[str], val: list[tuple[Path, int]]) -> None:
    present = {label for _, label in val}
    missing = [name for index, name in enumerate(class_names) if index not in present]
    if missing:
        log.warning(
            "%s: no images of class %s among the validation images (%s), which training has; "
            "its accuracy cannot be measured (add some)",
            root, ", ".join(repr(name) for name in missing), layout.description,
        )


def _keep_classes(root: Path, names: Sequence[str], keep: Sequence[str], *splits: list[tuple[Path, int]]) -> tuple[list[str], ...]:
    """Only the ``keep`` classes (``--classes``), in that order, relabelled."""
    missing = [name for name in keep if name not in names]
    if missing:
        raise DataError(f"--classes: {root} has no class '{missing[0]}' (its classes: {', '.join(names)}); pick from those")
    relabel = {names.index(name): new for new, name in enumerate(keep)}
    kept = [[(path, relabel[label]) for path, label in items if label in relabel] for items in splits]
    return (list(keep), *kept)


def _seeded_split(items: list[tuple[Path, int]], fraction: float, seed: int) -> tuple[list, list]:
    by_class: dict[int, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    train, val = [], []
    rng = random.Random(seed)
    for label in sorted(by_class):
        members = list(by_class[label])
        rng.shuffle(members)
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        val += members[:count]
        train += members[count:]
    return sorted(train, key=lambda t: str(t[0])), sorted(val, key=lambda t: str(t[0]))


# timm's names for PIL's filters, as the nearest filter tensors have
_INTERPOLATIONS = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "bicubic", "box": "bilinear", "hamming": "bilinear"}
MAX_CLASSES_LISTED = 12  # above this, the summary gives the range of images per class
JPEG_DRAFT_FACTOR = 2  # decode a JPEG at 1/2, 1/4 or 1/8 scale when it is at least this much larger than needed


def interpolation(config: InputConfig) -> Any:
    """The config's resize filter, for tensors."""
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(_INTERPOLATIONS.get(config.interpolation, "bilinear"))


def decode_resized(path: Path, channels: int, shorter_side: int, mode: Any) -> Any:
    """The image at ``path`` as uint8 ``(C, H, W)`` with its shorter side resized to ``shorter_side``.

    Decoded by ``torchvision.io`` (libjpeg-turbo, libpng) and resized on the tensor (its uint8
    antialiased kernels), which together take about two thirds of the time of PIL's decode and
    resize; a format torchvision cannot decode goes through PIL. A JPEG at least twice as large
    as needed is decoded by PIL at a reduced scale instead (``draft``: the decoder skips the
    detail the resize would discard), as DALI and FFCV do.
    """
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    pil_mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:  # reads the header only: recognises the file, gives its size
            if image.format == "JPEG" and min(image.size) >= JPEG_DRAFT_FACTOR * shorter_side:
                image.draft(pil_mode, (shorter_side, shorter_side))
                tensor = F.pil_to_tensor(image.convert(pil_mode))
            else:
                tensor = None
        if tensor is None:
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 deprecates its decoders for TorchCodec's, which needs FFmpeg
                    # installed; until they go, PIL below is the fallback
                    warnings.simplefilter("ignore", DeprecationWarning)
                    tensor = decode_image(read_file(str(path)), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
            except RuntimeError:  # a format torchvision does not decode (BMP, TIFF …)
                with Image.open(path) as image:
                    tensor = F.pil_to_tensor(image.convert(pil_mode))
    except (UnidentifiedImageError, OSError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc}); remove or replace it") from None
    if tensor.dtype != torch.uint8:  # 16-bit PNGs
        tensor = F.to_dtype(tensor, torch.uint8, scale=True)
    return F.resize(tensor, shorter_side, interpolation=mode, antialias=True)


class ImageDataset:
    """Labelled images, decoded when an item is read (in the DataLoader's workers), then transformed.

    ``cache`` (a :class:`~zoo_core.imagecache.SharedImageCache`, ``--cache-images``) keeps decoded,
    resized images for all workers at once, up to its size; without one nothing is kept, so
    memory does not grow with the dataset.
    """

    def __init__(
        self, items: Sequence[tuple[Path, int]], num_classes: int, config: InputConfig, transform: Any, cache: Any = None
    ) -> None:
        self.items = list(items)
        self.num_classes = num_classes
        self.config = config
        self.transform = transform
        self.cache = cache
        self._mode = interpolation(config)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> Any:
        image = self.cache.get(index) if self.cache is not None else None
        if image is None:
            image = decode_resized(self.items[index][0], self.config.channels, self.config.resize_size, self._mode)
            if self.cache is not None:
                self.cache.put(index, image)
        return image

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        return self.transform(self._load(index)), self.items[index][1], self.num_classes


class ClassificationMetrics:
    """Accuracy, top-5 accuracy (with more than five classes) and macro-F1 from a confusion matrix;
    per class, precision, recall, F1 and support (:meth:`details`)."""

    TOP_K = 5

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        import torch

        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # rows: true class, columns: predicted
        self.top5_hits = 0
        self.count = 0

    def update(self, outputs: Any, batch: Batch) -> None:
        import torch

        logits = outputs.detach().float().cpu()
        labels = batch.labels.cpu()
        predictions = logits.argmax(dim=1)
        self.confusion += torch.bincount(labels * self.num_classes + predictions, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        if self.num_classes > self.TOP_K:  # with five classes or fewer, top-5 is always 1
            self.top5_hits += int((logits.topk(self.TOP_K, dim=1).indices == labels[:, None]).any(dim=1).sum())
        self.count += int(labels.numel())

    def _per_class(self) -> tuple[Any, Any, Any, Any]:
        confusion = self.confusion.double()
        true_positive = confusion.diag()
        precision = true_positive / confusion.sum(dim=0).clamp(min=1)
        recall = true_positive / confusion.sum(dim=1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return precision, recall, f1, self.confusion.sum(dim=1)

    def compute(self) -> dict[str, float]:
        top_k = {"top5": self.top5_hits / max(self.count, 1)} if self.num_classes > self.TOP_K else {}
        if self.count == 0:
            return {"accuracy": 0.0, **top_k, "f1_macro": 0.0}
        _, _, f1, support = self._per_class()
        present = support > 0
        return {
            "accuracy": int(self.confusion.diag().sum()) / self.count,
            **top_k,
            "f1_macro": float(f1[present].mean()) if bool(present.any()) else 0.0,
        }

    def details(self) -> dict[str, Any]:
        """Per class (precision, recall, F1, support) and the confusion matrix, rows the true classes."""
        precision, recall, f1, support = self._per_class()
        per_class = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(self.class_names, precision, recall, f1, support)
        ]
        return {"per_class": per_class, "confusion_matrix": {"classes": self.class_names, "counts": self.confusion.tolist()}}


def _check_loss_settings(loss_scales: Mapping[str, float], loss_norm: Sequence[str], *, where: str = "") -> None:
    """Classification has one loss component, ``cls``, already a mean over the batch."""
    unknown = [key for key in loss_scales if key != "cls"]
    if unknown:
        raise RunError(f"{where}loss_scales.{unknown[0]}: classification's one loss component is cls; scale that")
    if loss_norm:
        raise RunError(
            f"{where}loss_norm: classification's loss is already a mean over the batch; loss_norm applies "
            "to detection heads that sum theirs (--detector multigrid); remove it from the stage"
        )


class ClassificationTask:
    name = "classification"
    augment_keys = frozenset({"hflip", "crop_scale", "mixup", "mixup_alpha", "mosaic"})
    # settings of another augmentation, not randomness of their own; every other key is random
    augment_settings = frozenset({"mixup_alpha"})
    monitor = ("val_loss", "min")

    # -- data ------------------------------------------------------------------------------------

    def load_data(
        self,
        root: Path,
        *,
        seed: int,
        val_fraction: float,
        classes: Sequence[str] | None = None,
        reader: DatasetReader | None = None,
    ) -> TaskData:
        """Read a data folder or list file with ``reader`` (the engine picks it from the registered
        readers; ``None``: the first of this plugin's own that recognises ``root``)."""
        root = Path(root)
        reader = reader or pick_reader(builtin_readers(), root, None, self.name)
        coco = next((f for f in ("train/annotations.json", "annotations.json", "annotations/instances_train2017.json") if (root / f).is_file()), None)
        if coco is not None:
            raise DataError(f"{root}: holds COCO detection annotations ({coco}), not class folders; use --task detection")
        layout = reader.read(root)
        if not isinstance(layout, ClassificationLayout):
            raise PluginError(
                f"dataset reader '{reader.name}' returned a {type(layout).__name__}; a classification reader returns "
                "zoo_classification.readers.ClassificationLayout"
            )
        class_names, train, val, split = list(layout.class_names), layout.train, layout.val, layout.description
        if val is None:
            train, val = _seeded_split(train, val_fraction, seed)
            split = f"{split} split {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
        if classes is not None:
            class_names, train, val = _keep_classes(root, class_names, classes, train, val)
        if layout.val is not None:
            _warn_missing(root, layout, class_names, val)
        if len(class_names) < 2:
            raise DataError(f"{root}: found {len(class_names)} class; classification needs at least 2")
        if not val:
            raise DataError(f"{root}: no validation images; add a val/ folder or more images per class")
        return TaskData(root, tuple(class_names), train, val, split)

    def _transform(self, input_config: InputConfig, augment: Mapping[str, Any]) -> Any:
        """After the shorter side's resize (done on reading): timm's eval crop and normalisation, or
        for training a random resized crop (``crop_scale``) in place of the centre crop, and flips."""
        import torch
        from torchvision.transforms import v2

        steps: list[Any] = []
        if augment.get("crop_scale"):
            scale = float(augment["crop_scale"])
            rrc = v2.RandomResizedCrop(input_config.size, scale=(scale, 1.0), interpolation=interpolation(input_config), antialias=True)
            steps.append(rrc)
        else:
            steps.append(v2.CenterCrop(input_config.size))
        if augment.get("hflip"):
            steps.append(v2.RandomHorizontalFlip(float(augment["hflip"])))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(input_config.mean), list(input_config.std))]
        return v2.Compose(steps)

    def describe_transforms(self, input_config: InputConfig, augment: Mapping[str, Any]) -> str:
        """How images are prepared, in one line (``zoo info``, the run's summary)."""
        if augment.get("crop_scale"):
            crop = f"random resized crop {input_config.size} (scale {float(augment['crop_scale']):g}–1)"
        else:
            crop = f"centre crop {input_config.size}"
        if augment.get("hflip"):
            crop += f" → horizontal flip (p {float(augment['hflip']):g})"
        return input_config.describe(crop)

    def num_classes(self, data: TaskData) -> int:
        return len(data.class_names)

    def describe_data(self, data: TaskData) -> list[str]:
        """The summary's data lines: the layout read, images per split and per class."""
        counts = {part: [0] * len(data.class_names) for part in ("train", "val")}
        for part, items in (("train", data.train), ("val", data.val)):
            for _, label in items:
                counts[part][label] += 1
        lines = [f"data    {data.root} ({data.split}): {len(data.class_names)} classes, {len(data.train)} train and {len(data.val)} val images"]
        if len(data.class_names) <= MAX_CLASSES_LISTED:
            pairs = ", ".join(f"{name} {counts['train'][i]}/{counts['val'][i]}" for i, name in enumerate(data.class_names))
            lines.append(f"        per class (train/val): {pairs}")
        else:
            spread = {part: (min(values), max(values)) for part, values in counts.items()}
            lines.append(f"        per class: {spread['train'][0]}–{spread['train'][1]} train, {spread['val'][0]}–{spread['val'][1]} val")
        return lines  # a class without val images is a warning of its own (load_data)

    def dataset(
        self, data: TaskData, split: str, *, input_config: InputConfig, augment: Mapping[str, Any], image_cache: Any = None
    ) -> Any:
        items = data.train if split == "train" else data.val
        transform = self._transform(input_config, augment if split == "train" else {})
        return ImageDataset(items, len(data.class_names), input_config, transform, image_cache)

    def collate(self, items: Sequence[tuple[Any, int, int]]) -> Batch:
        import torch
        from torch.utils.data import default_collate

        # in a DataLoader worker, default_collate stacks straight into shared memory: the batch then
        # reaches the training process without another copy
        inputs = default_collate([item[0] for item in items])
        labels = torch.tensor([item[1] for item in items], dtype=torch.long)
        return Batch(inputs, labels, labels, items[0][2])

    def deterministic(self, augment: Mapping[str, Any]) -> bool:
        """Whether a stage's inputs are the same every epoch (then trunk features can be cached)."""
        return not any(augment.get(key) for key in self.augment_keys - self.augment_settings)

    # -- batch-level augmentation -------------------------------------------------------------------

    def augment_batch(self, batch: Batch, augment: Mapping[str, Any], generator: Any) -> Batch:
        """Mosaic or mixup, each with its probability per batch; targets become class probabilities."""
        import torch

        mosaic, mixup = float(augment.get("mosaic", 0) or 0), float(augment.get("mixup", 0) or 0)
        if not (mosaic or mixup):
            return batch
        draw = float(torch.rand((), generator=generator))
        if draw >= mosaic + mixup:
            return batch
        soft = torch.nn.functional.one_hot(batch.labels, batch.num_classes).to(batch.inputs.dtype)
        size = batch.inputs.shape[0]
        if draw < mosaic:
            inputs, targets = _mosaic(batch.inputs, soft, generator)
        else:
            alpha = float(augment.get("mixup_alpha", 0.2))
            lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 0.5
            lam = max(lam, 1 - lam)
            order = torch.randperm(size, generator=generator).to(batch.inputs.device)
            inputs = lam * batch.inputs + (1 - lam) * batch.inputs[order]
            targets = lam * soft + (1 - lam) * soft[order]
        return Batch(inputs, targets, batch.labels, batch.num_classes)

    # -- model, loss, metrics ---------------------------------------------------------------------------

    def to_device(self, batch: Batch, device: Any, channels_last: bool) -> Batch:
        import torch

        inputs = batch.inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return Batch(
            inputs, batch.targets.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True), batch.num_classes
        )

    def inputs(self, batch: Batch) -> Any:
        return batch.inputs

    def with_inputs(self, batch: Batch, inputs: Any) -> Batch:
        return Batch(inputs, batch.targets, batch.labels, batch.num_classes)

    def cached_batch(self, dataset: ImageDataset, indices: list[int], inputs: Any) -> Batch:
        """A batch over cached trunk features: labels come from the item list, no image is loaded."""
        import torch

        labels = torch.tensor([dataset.items[i][1] for i in indices], dtype=torch.long)
        return Batch(inputs, labels, labels, dataset.num_classes)

    def forward(self, model: Any, batch: Batch) -> Any:
        outputs = model(batch.inputs)
        if isinstance(outputs, Mapping):  # a multi-head ZooModel: the first head is the classifier
            outputs = next(iter(outputs.values()))
        return outputs

    def check_recipe(self, recipe: Recipe, model: Any) -> None:
        for index, stage in enumerate(recipe.stages):
            _check_loss_settings(stage.loss_scales, stage.loss_norm, where=f"recipe '{recipe.name}' stages[{index}].")

    def loss(
        self, outputs: Any, batch: Batch, *, loss_scales: Mapping[str, float], loss_norm: Sequence[str] = (), recipe: Recipe | None
    ) -> dict[str, Any]:
        import torch.nn.functional as F

        _check_loss_settings(loss_scales, loss_norm)
        smoothing = recipe.label_smoothing if recipe is not None else 0.0  # a training regulariser: not in evaluation
        ce = F.cross_entropy(outputs.float(), batch.targets, label_smoothing=smoothing)
        scale = float(loss_scales.get("cls", 1.0))
        return {"loss": ce * scale, "cls": ce.detach()}

    def metrics(self, data: TaskData) -> ClassificationMetrics:
        return ClassificationMetrics(len(data.class_names), data.class_names)

    def batch_size(self, batch: Batch) -> int:
        return len(batch)

    # -- prediction ---------------------------------------------------------------------------------

    def predict_transform(self, input_config: InputConfig) -> Any:
        """One decoded image as in validation: the shorter side resized, the centre crop, normalised."""
        from torchvision.transforms import v2

        resize = v2.Resize(input_config.resize_size, interpolation=interpolation(input_config), antialias=True)
        return v2.Compose([resize, self._transform(input_config, {})])

    def predict(self, loaded: Any, paths: Sequence[Path], *, threshold: float | None, top_k: int | None) -> list[dict[str, Any]]:
        """The ``top_k`` (default 5) most probable classes of each image, with probabilities at least ``threshold``."""
        import torch

        config = loaded.input_config
        crop, mode = self._transform(config, {}), interpolation(config)
        transform = lambda path: crop(decode_resized(path, config.channels, config.resize_size, mode))  # noqa: E731  (as in validation)
        names = loaded.class_names
        k = min(top_k or 5, len(names))
        answers = []
        for start in range(0, len(paths), 32):
            chunk = paths[start : start + 32]
            inputs = torch.stack([transform(path) for path in chunk]).to(loaded.device)
            with torch.no_grad():
                probabilities = self.forward(loaded.model, Batch(inputs, None, None, len(names))).float().softmax(dim=1).cpu()
            values, indices = probabilities.topk(k, dim=1)
            for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
                classes = [{"name": names[i], "probability": p} for p, i in zip(row_values, row_indices) if p >= (threshold or 0.0)]
                answers.append({"image": str(path), "classes": classes})
        return answers


def _mosaic(inputs: Any, soft: Any, generator: Any) -> tuple[Any, Any]:
    """Tile each image with three others (half resolution each); labels weighted by area."""
    import torch
    import torch.nn.functional as F

    size, _, height, width = inputs.shape
    half_h, half_w = height // 2, width // 2
    orders = [torch.arange(size)] + [torch.randperm(size, generator=generator) for _ in range(3)]
    tiles = [F.interpolate(inputs[order.to(inputs.device)], size=(half_h, half_w), mode="bilinear", align_corners=False) for order in orders]
    top = torch.cat([tiles[0], tiles[1]], dim=3)
    bottom = torch.cat([tiles[2], tiles[3]], dim=3)
    mosaic = torch.cat([top, bottom], dim=2)
    if mosaic.shape[-2:] != inputs.shape[-2:]:
        mosaic = F.interpolate(mosaic, size=(height, width), mode="bilinear", align_corners=False)
    targets = sum(soft[order.to(soft.device)] for order in orders) / 4
    return mosaic, targets


def read_image(path: Path, channels: int) -> Any:
    """An image file as a uint8 tensor (C, H, W); an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as image:
            return F.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc}); remove or replace it") from None
