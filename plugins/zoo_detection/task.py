"""Object detection on COCO-format data (see :mod:`.coco` for the layouts).

The model is a :class:`~.model.Detector`: a registry backbone name is composed with a detector
tier (``NAME+detector/fcos``, ``--detector multigrid`` …). The loss is the head's named
components (FCOS: ``classification``, ``bbox_regression``, ``bbox_ctrness``; multigrid:
``coord``, ``object``, ``no_object``, ``class``, ``anchor``), each weighted by the stage's
``loss_scales`` (over the head's own defaults) and, for heads that sum them, divided as the
stage's ``loss_norm`` says; validation computes them too, with the model in eval mode and the
head's default normalisation.
Metrics: COCO mAP and precision/recall/F1 at IoU 0.5 (:mod:`.metrics`); ``best`` follows ``map``.

Stage ``augment`` settings: ``hflip``, ``scale_jitter``, ``mosaic``, ``mixup``, ``mixup_alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from zoo_core.engine.task import TaskData
from zoo_core.errors import DataError, RunError, UnknownNameError
from zoo_core.names import COMPOSE, looks_like_path, split_source
from zoo_core.paths import display
from zoo_core.specs import InputConfig, Recipe

from .coco import check_classes, find_annotations, read_split, seeded_split

DETECTOR_FAMILY = "detector"
DETECTOR_BUILDER = "zoo_detection.model:build_detector"
DEFAULT_DETECTOR = "fcos"
SCORE_THRESHOLD = 0.5  # precision/recall/F1 count detections scoring at least this


def _check_loss_settings(
    loss_scales: Mapping[str, float], loss_norm: Sequence[str], names: Sequence[str], modes: Sequence[str], *, where: str = ""
) -> None:
    """A ``loss_scales`` key must name one of the head's components, and ``loss_norm`` needs a head that sums them."""
    unknown = [key for key in loss_scales if key not in names]
    if names and unknown:
        raise RunError(f"{where}loss_scales.{unknown[0]}: the detector's losses are {', '.join(names)}; scale one of those")
    if loss_norm and not modes:
        raise RunError(
            f"{where}loss_norm: this detector's head normalises its own losses ({', '.join(names)}); "
            "loss_norm applies to heads that sum theirs (--detector multigrid); remove it from the stage"
        )


def _category_names(split: Any) -> list[str]:
    return [name for _, name in split.categories]


class DetectionTask:
    name = "detection"
    augment_keys = frozenset({"hflip", "scale_jitter", "mosaic", "mixup", "mixup_alpha"})
    augment_settings = frozenset({"mixup_alpha"})
    monitor = ("map", "max")

    # -- data ----------------------------------------------------------------------------------

    def load_data(self, root: Path, *, seed: int, val_fraction: float, classes: Sequence[str] | None = None) -> TaskData:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such data folder")
        found = find_annotations(root)
        if found is None:
            raise DataError(
                f"{display(root)}: no COCO annotations (looked for train/annotations.json, annotations/instances_train2017.json "
                "and annotations.json); for folders of class subfolders use --task classification"
            )
        train_file, val_file, layout = found
        keep = list(classes) if classes is not None else None
        train = read_split(train_file, keep=keep)  # parsed once; the file's categories are all listed
        if keep is not None:
            check_classes(keep, _category_names(train), display(train_file))
        names = keep or _category_names(train)
        if val_file is not None:
            val = read_split(val_file, keep=names)
            missing = [name for name in names if name not in _category_names(val)]
            if missing:
                raise DataError(f"{display(val_file)}: has no category '{missing[0]}', which {display(train_file)} has; add it to its categories")
            train_records, val_records, split = list(train.images), list(val.images), layout
        else:
            train_records, val_records = seeded_split(train.images, val_fraction, seed)
            split = f"{layout} split {1 - val_fraction:.0%}/{val_fraction:.0%} of the images (seed {seed})"
        if not names:
            raise DataError(f"{display(train_file)}: no categories; detection needs at least one")
        if not val_records:
            raise DataError(f"{display(root)}: no validation images; add {root}/val/annotations.json or more images")
        return TaskData(root, tuple(names), train_records, val_records, split)

    def num_classes(self, data: TaskData) -> int:
        return len(data.class_names)

    def model_name(self, name: str, *, detector: str | None, registry: Any) -> str:
        """The detector to build for ``name``: itself when it is one (or a detector's checkpoint), else
        ``NAME+detector/KIND`` — a registry backbone, or a backbone export (``zoo export --backbone-only``)
        whose tensors start the backbone while neck and head are new."""
        prefix, body = split_source(name)
        if prefix == "file" or (looks_like_path(name) and Path(name).expanduser().is_file()):
            path = Path(body if prefix == "file" else name).expanduser()
            if self._is_backbone_export(path, registry):  # a classifier's backbone: a backbone like any other
                return f"{name}{COMPOSE}{self._detector_tier(detector, registry)}"
            if detector is not None:
                raise RunError(f"--detector: {name} is a checkpoint, which already has its detector; leave --detector out")
            return name
        if self._is_detector(registry.resolve(name), registry):
            if detector is not None:
                raise RunError(f"--detector: {name} is already a detector; leave --detector out")
            return name
        return f"{name}{COMPOSE}{self._detector_tier(detector, registry)}"

    @staticmethod
    def _detector_tier(detector: str | None, registry: Any) -> str:
        try:
            return registry.resolve(f"{DETECTOR_FAMILY}/{detector or DEFAULT_DETECTOR}").name
        except UnknownNameError as exc:
            raise RunError(f"--detector {detector!r}: {exc}") from None

    @staticmethod
    def _is_detector(resolved: Any, registry: Any) -> bool:
        return resolved.tier is not None and registry.family(resolved.tier.family).builder == DETECTOR_BUILDER

    def _is_backbone_export(self, path: Path, registry: Any) -> bool:
        """Whether a checkpoint is a classifier's backbone export (``False``: a detector's checkpoint).

        A whole classifier's checkpoint is refused: its classifier would be dropped without a word,
        so ``zoo transfer`` (which reports what it carries) or ``zoo export --backbone-only`` comes first.
        """
        from zoo_core.tensors import TensorSource

        source = TensorSource.from_file(path)
        architecture = source.model
        if not architecture:
            return False  # the file source says what is missing when the run reads it
        resolved = registry.resolve(architecture)
        backbone_export = (source.meta.get("provenance") or {}).get("export") == "backbone"
        if self._is_detector(resolved, registry):
            if backbone_export:
                raise RunError(
                    f"{display(path)}: holds the backbone of a {architecture} detector; carry it into the detector to train: "
                    f"`zoo transfer {display(path)} --to {resolved.tier.backbone}{COMPOSE}{DETECTOR_FAMILY}/KIND "
                    "--num-classes N -o start.pt`, then --model start.pt"
                )
            return False
        if backbone_export:
            return True
        raise RunError(
            f"{display(path)}: holds a {architecture} classifier, not a detector; start from its backbone "
            f"(`zoo export {display(path)} --backbone-only -o backbone.safetensors`, then --model backbone.safetensors) "
            f"or carry it into one: `zoo transfer {display(path)} --to {architecture}{COMPOSE}{DETECTOR_FAMILY}/{DEFAULT_DETECTOR} "
            "--num-classes N -o detector.pt`"
        )

    def dataset(
        self, data: TaskData, split: str, *, input_config: InputConfig, augment: Mapping[str, Any], image_cache: Any = None
    ) -> Any:
        from .data import DetectionDataset

        training = split == "train"
        return DetectionDataset(data.train if training else data.val, input_config, augment if training else {}, image_cache)

    def describe_data(self, data: TaskData) -> list[str]:
        """The summary's data lines: images and boxes per split, boxes per class."""
        boxes = {part: [0] * len(data.class_names) for part in ("train", "val")}
        for part, records in (("train", data.train), ("val", data.val)):
            for record in records:
                for label in record.labels.tolist():
                    boxes[part][label] += 1
        total = {part: sum(values) for part, values in boxes.items()}
        pairs = ", ".join(f"{name} {boxes['train'][i]}/{boxes['val'][i]}" for i, name in enumerate(data.class_names[:12]))
        more = f" and {len(data.class_names) - 12} more" if len(data.class_names) > 12 else ""
        return [
            f"data    {data.root} ({data.split}): {len(data.class_names)} classes, {len(data.train)} train images ({total['train']} boxes), "
            f"{len(data.val)} val images ({total['val']} boxes)",
            f"        boxes per class (train/val): {pairs}{more}",
        ]

    def collate(self, items: Sequence[Any]) -> Any:
        from .data import collate

        return collate(items)

    def deterministic(self, augment: Mapping[str, Any]) -> bool:
        return not any(augment.get(key) for key in self.augment_keys - self.augment_settings)

    def augment_batch(self, batch: Any, augment: Mapping[str, Any], generator: Any) -> Any:
        """Mosaic or mixup, each with its probability per batch."""
        import torch

        from .data import mixup, mosaic

        chance_mosaic, chance_mixup = float(augment.get("mosaic", 0) or 0), float(augment.get("mixup", 0) or 0)
        if not (chance_mosaic or chance_mixup):
            return batch
        draw = float(torch.rand((), generator=generator))
        if draw >= chance_mosaic + chance_mixup:
            return batch
        if draw < chance_mosaic:
            images, targets = mosaic(batch.images, batch.targets, generator)
        else:
            images, targets = mixup(batch.images, batch.targets, generator, float(augment.get("mixup_alpha", 1.5)))
        return attrs.evolve(batch, images=images, targets=targets)

    # -- model, loss, metrics -------------------------------------------------------------------

    def to_device(self, batch: Any, device: Any, channels_last: bool) -> Any:
        import torch

        if isinstance(batch.images, list):  # cached backbone maps
            images = [level.to(device, non_blocking=True) for level in batch.images]
        else:
            images = batch.images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in batch.targets]
        return attrs.evolve(batch, images=images, targets=targets)

    def inputs(self, batch: Any) -> Any:
        return batch.images

    def with_inputs(self, batch: Any, inputs: Any) -> Any:
        return attrs.evolve(batch, images=inputs)

    def cached_batch(self, dataset: Any, indices: list[int], inputs: Any) -> Any:
        from .data import cached_batch

        return cached_batch(dataset, indices, inputs)

    def forward(self, model: Any, batch: Any) -> Any:
        """``model`` is the detector, or (feature cache) what runs its neck and head on cached maps."""
        return model(batch.images, batch.targets, batch.size)

    def check_recipe(self, recipe: Recipe, model: Any) -> None:
        """Each stage's ``loss_scales`` names the head's components, and ``loss_norm`` only a head that sums them."""
        names, modes = tuple(getattr(model, "loss_names", ())), tuple(getattr(model, "loss_norm_modes", ()))
        for index, stage in enumerate(recipe.stages):
            _check_loss_settings(stage.loss_scales, stage.loss_norm, names, modes, where=f"recipe '{recipe.name}' stages[{index}].")

    def loss(
        self, outputs: Any, batch: Any, *, loss_scales: Mapping[str, float], loss_norm: Sequence[str] = (), recipe: Recipe | None
    ) -> dict[str, Any]:
        """The head's components, normalised by ``loss_norm`` (or the head's default) and weighted
        by ``loss_scales`` over the head's own scales; the components are reported unweighted."""
        components = dict(outputs.losses)
        if not components:
            raise RunError("the detector returned no losses; it must be given the batch's targets")
        _check_loss_settings(loss_scales, loss_norm, tuple(components), tuple(outputs.normalisers))
        for mode in tuple(loss_norm) or tuple(outputs.default_norm):
            components = {name: value / outputs.normalisers[mode][name] for name, value in components.items()}
        scales = {**outputs.scales, **loss_scales}
        total = sum(value * float(scales.get(name, 1.0)) for name, value in components.items())
        return {"loss": total, **{name: value.detach() for name, value in components.items()}}

    def metrics(self, data: TaskData) -> Any:
        from .metrics import DetectionMetrics

        return DetectionMetrics(SCORE_THRESHOLD)

    def batch_size(self, batch: Any) -> int:
        return len(batch)

    def demo(self, out: str | Path, *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
        """``zoo demo detection``: pretrain on digit scenes, fine-tune on tree crowns, against scratch."""
        from .demo import run_detection_demo

        return run_detection_demo(out, quick=quick, seed=seed)

    # -- prediction ---------------------------------------------------------------------------------

    def predict_transform(self, input_config: InputConfig) -> Any:
        """One image as in validation: letterboxed to the input size, then normalised."""
        from .data import sample_transform

        return sample_transform(input_config, {})

    def predict(self, loaded: Any, paths: Sequence[Path], *, threshold: float | None, top_k: int | None) -> list[dict[str, Any]]:
        """Boxes scoring at least ``threshold`` (default 0.5), at most ``top_k`` per image, in the file's pixels."""
        from .predict import predict_boxes

        return predict_boxes(loaded, paths, self.predict_transform(loaded.input_config), threshold=SCORE_THRESHOLD if threshold is None else threshold, top_k=top_k)

    def draw(self, answer: Mapping[str, Any], output: Path) -> Path:
        """The image with its boxes, class names and scores drawn, as ``output/<name>.png``."""
        from .predict import draw_boxes

        return draw_boxes(answer, output)
