"""Object detection: COCO-format data, torchvision detectors over registry backbones, box-correct
augmentation, class-aware head transfer, the backbone round trip, and every bad input.

Real torchvision FCOS / RetinaNet / Faster R-CNN heads over a real timm ResNet, real COCO files
written here, real images: scenes composed from the bundled handwritten digits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_error, assert_same_tensors, scrambled, write_image_folder
from PIL import Image
from zoo_detection.coco import read_split
from zoo_detection.data import DetectionDataset, collate, mosaic
from zoo_detection.metrics import ThresholdCounts
from zoo_detection.scenes import write_digit_scenes

import zoo_core
from zoo_core.errors import DataError
from zoo_core.registry import default_registry
from zoo_core.specs import InputConfig

BACKBONE = "timm:resnet10t"
FCOS = f"{BACKBONE}+detector/fcos"
SIZE = 64
RECIPE = """
[recipes.det-tiny]
task = "detection"
batch_size = 4
[[recipes.det-tiny.stages]]
name = "heads"
epochs = 1
train = ["head"]
lr = 1e-3
[[recipes.det-tiny.stages]]
name = "all"
epochs = 1
lr = 1e-3
grad_clip = 5.0
"""
ARGS = ("--recipe", "det-tiny", "--no-pretrained", "--image-size", str(SIZE))


def write_scenes(root: Path, *, train: int = 8, val: int = 4, digits=(0, 1, 2)) -> Path:
    write_digit_scenes(root / "train", train, seed=0, size=SIZE, digit=20, digits=digits)
    write_digit_scenes(root / "val", val, seed=1, size=SIZE, digit=20, digits=digits)
    return root


@pytest.fixture
def scenes(isolated: Path) -> Path:
    Path("zoo.toml").write_text(RECIPE)
    return write_scenes(isolated / "scenes")


def edit_annotations(root: Path, change) -> Path:
    path = root / "train" / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


# --- data layouts ------------------------------------------------------------------------------------------


def test_the_three_coco_layouts_read_the_same_images(scenes: Path, tmp_path: Path) -> None:
    task = default_registry().task("detection")
    split_folders = task.load_data(scenes, seed=0, val_fraction=0.25)
    assert split_folders.class_names == ("0", "1", "2") and split_folders.split == "train/ and val/ annotations.json"
    assert (len(split_folders.train), len(split_folders.val)) == (8, 4)

    coco = tmp_path / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(scenes / split, coco / f"{split}2017")
        shutil.move(coco / f"{split}2017" / "annotations.json", coco / "annotations" / f"instances_{split}2017.json")
    layout_2017 = task.load_data(coco, seed=0, val_fraction=0.25)
    assert layout_2017.split == "COCO 2017 annotations/"
    assert [r.image_id for r in layout_2017.train] == [r.image_id for r in split_folders.train]
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(layout_2017.train, split_folders.train))

    single = tmp_path / "single"
    (single / "images").mkdir(parents=True)
    for image in (scenes / "train").glob("*.png"):
        shutil.copy(image, single / "images" / image.name)  # file_name is looked up in images/ too
    shutil.copy(scenes / "train" / "annotations.json", single / "annotations.json")
    one_file = task.load_data(single, seed=3, val_fraction=0.25)
    assert (len(one_file.train), len(one_file.val)) == (6, 2)
    assert sorted(r.image_id for r in [*one_file.train, *one_file.val]) == list(range(1, 9))
    again = task.load_data(single, seed=3, val_fraction=0.25)
    assert [r.image_id for r in again.val] == [r.image_id for r in one_file.val]  # seeded


def test_classes_keeps_those_categories_and_images_without_them_stay_as_negatives(scenes: Path) -> None:
    data = default_registry().task("detection").load_data(scenes, seed=0, val_fraction=0.2, classes=["1"])
    assert data.class_names == ("1",)
    full = read_split(scenes / "train" / "annotations.json")
    ones = {r.image_id: int((r.labels == 1).sum()) for r in full.images}
    assert {r.image_id: len(r.boxes) for r in data.train} == ones  # every image kept; only "1" boxes, now label 0
    assert all((r.labels == 0).all() for r in data.train)
    assert 0 in ones.values()  # some images are negatives now


def test_crowd_boxes_are_left_out_of_training_targets_and_ignored_when_matching(scenes: Path) -> None:
    def crowd_first(data):
        data["annotations"][0]["iscrowd"] = 1

    edit_annotations(scenes, crowd_first)
    record = read_split(scenes / "train" / "annotations.json").images[0]
    assert record.crowd[0] and len(record.boxes) >= 1
    dataset = DetectionDataset([record], InputConfig(size=SIZE), {})
    _, target, _ = dataset[0]
    assert len(target["boxes"]) == len(record.boxes) - 1
    batch = collate([dataset[0]])
    assert batch.truth[0]["iscrowd"].tolist()[0] == 1  # the metrics still see it, flagged

    counts = ThresholdCounts(0.5)
    crowd_box = torch.from_numpy(record.boxes[:1])
    counts.update({"boxes": crowd_box, "scores": torch.tensor([0.9]), "labels": torch.from_numpy(record.labels[:1])}, batch.truth[0])
    assert counts.false_positives == 0 and counts.true_positives == 0  # COCO: a match to a crowd counts for nothing


# --- the model -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["fcos", "retinanet", "fasterrcnn"])
def test_a_detector_keeps_the_classifier_names_and_groups_backbone_neck_head(detector: str) -> None:
    classifier = zoo_core.create_model(BACKBONE)
    model = zoo_core.create_model(f"{BACKBONE}+detector/{detector}", num_classes=3)
    backbone = {key.removeprefix("backbone."): value.shape for key, value in model.state_dict().items() if key.startswith("backbone.")}
    assert backbone == {key: value.shape for key, value in classifier.state_dict().items() if not key.startswith("fc.")}
    groups = zoo_core.layer_groups(model)
    assert [(g.name, g.role.value) for g in groups][-3:] == [("layer4", "backbone"), ("neck", "neck"), ("heads.detect", "head")]

    images = torch.randn(2, 3, SIZE, SIZE)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 36.0]]), "labels": torch.tensor([2])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    model.train()
    trained = model(images, targets)
    assert set(trained.losses) == set(model.loss_names) and trained.detections == []
    model.eval()
    evaluated = model(images, targets)
    assert set(evaluated.losses) == set(model.loss_names) and len(evaluated.detections) == 2
    assert all(found["labels"].lt(3).all() and found["labels"].ge(0).all() for found in evaluated.detections)


def test_validation_losses_leave_batchnorm_statistics_alone() -> None:
    model = zoo_core.create_model("timm:resnet10t+detector/fasterrcnn", num_classes=2).eval()
    before = {key: value.clone() for key, value in model.state_dict().items() if "running" in key}
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 36.0]]), "labels": torch.tensor([1])}]
    with torch.no_grad():
        output = model(torch.randn(1, 3, SIZE, SIZE), targets)
    assert set(output.losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.equal(before[key], model.state_dict()[key]) for key in before)
    assert not model.heads["detect"].rpn.training  # the flag was restored


def test_the_feature_maps_hook_decides_what_the_neck_sees(make_registry) -> None:
    class LastTwoOnly:
        @zoo_core.hookimpl
        def zoo_feature_maps(self, model, registry):
            from zoo_core.anatomy import FeatureMaps

            def extract(images):
                return model.forward_intermediates(images, indices=[3, 4], intermediates_only=True)

            return FeatureMaps(extract, channels=(256, 512), strides=(16, 32), names=("layer3", "layer4"))

    registry = make_registry(LastTwoOnly())
    model = zoo_core.create_model(FCOS, num_classes=2, registry=registry)
    assert model.neck.strides == (16, 32, 64, 128)  # two maps, then P6 and P7
    assert [tuple(t.shape[-2:]) for t in model.forward_features(torch.zeros(1, 3, SIZE, SIZE))] == [(4, 4), (2, 2)]


# --- class-aware transfer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["fcos", "retinanet", "fasterrcnn"])
def test_multi_class_head_rows_carry_into_a_single_class_detector_bitwise(detector: str, tmp_path: Path) -> None:
    from zoo_core.provenance import make_provenance

    name = f"{BACKBONE}+detector/{detector}"
    source = scrambled(zoo_core.create_model(name, num_classes=3), seed=1)
    provenance = make_provenance(model=name, num_classes=3, class_names=["car", "whiteline", "sign"])
    torch.save({"model_state_dict": source.state_dict(), "provenance": provenance}, tmp_path / "multi.pt")
    target = zoo_core.create_model(name, num_classes=1)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    plan = zoo_core.plan_transfer(tmp_path / "multi.pt", target, target_classes=["whiteline"])
    plan.apply(target)
    layouts = {rows.key: rows for rows in default_registry().plugins.hook.zoo_class_rows(model=target)}
    assert {entry.target for entry in plan.entries if entry.action.value == "remap-classes"} == set(layouts)
    source_state, state = source.state_dict(), target.state_dict()
    for key, rows in layouts.items():
        per_block_source = rows.rows(3) // rows.repeats
        per_block_target = rows.rows(1) // rows.repeats
        theirs = source_state[key].reshape(rows.repeats, per_block_source, *source_state[key].shape[1:])
        ours = state[key].reshape(rows.repeats, per_block_target, *state[key].shape[1:])
        assert torch.equal(ours[:, : rows.leading], theirs[:, : rows.leading])  # background rows
        whiteline = rows.leading + 1 * rows.width
        assert torch.equal(ours[:, rows.leading :], theirs[:, whiteline : whiteline + rows.width])
    shared = [key for key in state if key not in layouts]
    assert all(torch.equal(state[key], source_state[key]) for key in shared)  # box regression, FPN, backbone
    assert any(not torch.equal(before[key], state[key]) for key in layouts)


def test_backbone_round_trip_classifier_detector_export_classifier_is_bitwise(zoo, tmp_path: Path) -> None:
    classifier = scrambled(zoo_core.create_model(BACKBONE, num_classes=4), seed=2)
    torch.save({"model_state_dict": classifier.state_dict()}, tmp_path / "classifier.pt")
    assert zoo("transfer", tmp_path / "classifier.pt", "--to", FCOS, "--num-classes", "2", "--require", "backbone=1.0",
               "-o", tmp_path / "detector.pt").code == 0  # fmt: skip
    assert zoo("export", tmp_path / "detector.pt", "--backbone-only", "-o", tmp_path / "backbone.safetensors").code == 0
    result = zoo("transfer", tmp_path / "backbone.safetensors", "--to", BACKBONE, "--num-classes", "4",
                 "--require", "backbone=1.0", "-o", tmp_path / "back.pt")  # fmt: skip
    assert result.code == 0, result
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model_state_dict"]
    assert_same_tensors({k: v for k, v in back.items() if not k.startswith("fc.")},
                        {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")})  # fmt: skip


# --- augmentation keeps boxes right --------------------------------------------------------------------------


def _box_scene(folder: Path) -> Path:
    """One 80x48 black image with a white 20x12 rectangle, annotated by its box."""
    folder.mkdir(parents=True)
    pixels = np.zeros((48, 80, 3), dtype=np.uint8)
    pixels[10:22, 50:70] = 255
    Image.fromarray(pixels).save(folder / "box.png")
    coco = {"images": [{"id": 1, "file_name": "box.png", "width": 80, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 10, 20, 12], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "box"}]}  # fmt: skip
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder / "annotations.json"


def _inside_and_outside(image: torch.Tensor, box: torch.Tensor) -> tuple[float, float]:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    bright = image.mean(dim=0) > 0.5
    inside = bright[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].float().mean()
    mask = torch.ones_like(bright)
    mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False
    return float(inside), float(bright[mask].float().mean())


@pytest.mark.parametrize("augment", [{}, {"hflip": 1.0}, {"scale_jitter": [0.6, 1.4]}, {"hflip": 1.0, "scale_jitter": 0.3}])
def test_a_box_drawn_into_the_pixels_stays_under_its_box(tmp_path: Path, augment: dict) -> None:
    record = read_split(_box_scene(tmp_path / "scene")).images[0]
    plain = InputConfig(size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    torch.manual_seed(0)
    dataset = DetectionDataset([record], plain, augment)
    for _ in range(5):
        image, target, _ = dataset[0]
        assert image.shape == (3, SIZE, SIZE) and len(target["boxes"]) <= 1
        if len(target["boxes"]):
            inside, outside = _inside_and_outside(image, target["boxes"][0])
            assert inside > 0.95 and outside < 0.01, (augment, target["boxes"])


def test_mosaic_moves_every_box_with_its_pixels(tmp_path: Path) -> None:
    record = read_split(_box_scene(tmp_path / "scene")).images[0]
    plain = InputConfig(size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    batch = collate([DetectionDataset([record], plain, {})[0]] * 4)
    images, targets = mosaic(batch.images, batch.targets, torch.Generator().manual_seed(0))
    assert images.shape == batch.images.shape and all(len(t["boxes"]) == 4 for t in targets)  # four tiles, four boxes
    for image, target in zip(images, targets):
        bright = image.mean(dim=0) > 0.5
        covered = torch.zeros_like(bright)
        for box in target["boxes"]:
            inside, _ = _inside_and_outside(image, box)
            assert inside > 0.9
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            covered[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
        assert not (bright & ~covered).any()  # no bright pixel outside every box


# --- losses --------------------------------------------------------------------------------------------------


def test_loss_scales_weight_each_named_component(scenes: Path) -> None:
    registry = default_registry()
    task = registry.task("detection")
    data = task.load_data(scenes, seed=0, val_fraction=0.2)
    batch = task.collate([task.dataset(data, "val", input_config=InputConfig(size=SIZE), augment={})[i] for i in range(2)])
    model = zoo_core.create_model(FCOS, num_classes=3).eval()
    with torch.no_grad():
        outputs = task.forward(model, batch)
        plain = task.loss(outputs, batch, loss_scales={}, recipe=None)
        scaled = task.loss(outputs, batch, loss_scales={"bbox_ctrness": 0.0, "classification": 2.0}, recipe=None)
    assert set(plain) == {"loss", "classification", "bbox_regression", "bbox_ctrness"}
    assert float(scaled["loss"]) == pytest.approx(2 * float(plain["classification"]) + float(plain["bbox_regression"]), rel=1e-6)
    with pytest.raises(zoo_core.errors.RunError, match="loss_scales.cls: the detector's losses are classification, bbox_regression, bbox_ctrness"):
        task.loss(outputs, batch, loss_scales={"cls": 1.0}, recipe=None)


# --- end to end through the CLI --------------------------------------------------------------------------------


def test_finetune_then_eval_a_detector_from_a_backbone_name(zoo, scenes: Path) -> None:
    result = zoo("finetune", *ARGS, "--model", BACKBONE, "--data", scenes, "--run-dir", "run", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["best"]["metric"] == "map"
    rows = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [row["trainable"] for row in rows] == [["heads.detect"], [g.name for g in zoo_core.layer_groups(zoo_core.create_model(FCOS, num_classes=3))]]
    for key in ("train_classification", "val_bbox_regression", "val_bbox_ctrness", "map", "map_50", "mar_100", "precision", "recall", "f1"):
        assert key in rows[-1], key
    assert json.loads(Path("run/run.json").read_text())["architecture"] == FCOS
    evaluated = zoo("eval", "run/checkpoints/last.pt", "--data", scenes, "--json")
    assert evaluated.code == 0, evaluated
    metrics = json.loads(evaluated.out)
    assert metrics["map"] == pytest.approx(rows[-1]["map"], abs=1e-9) and metrics["val_loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)


# --- bad input: exit 2, one line naming the file and the id, nothing written ------------------------------------


def _remove_first_image_file(root: Path) -> None:
    (root / "train" / "0000.png").unlink()


def _garble_first_image(root: Path) -> None:
    (root / "train" / "0000.png").write_bytes(b"not a png")


BAD_DATA = {
    "not json": (lambda root: (root / "train" / "annotations.json").write_text("{'images': ["), ("annotations.json: not JSON",)),
    "not coco": (lambda root: (root / "train" / "annotations.json").write_text('{"images": []}'), ("not a COCO annotation file", "'categories'")),
    "zero width": (lambda root: edit_annotations(root, lambda d: d["annotations"][0]["bbox"].__setitem__(2, 0)),
                   ("annotation 1 (image 1): box width and height must be > 0",)),
    "outside": (lambda root: edit_annotations(root, lambda d: d["annotations"][0]["bbox"].__setitem__(0, 60)),
                ("annotation 1 (image 1): box", "lies outside its 64x64 image")),
    "unknown category": (lambda root: edit_annotations(root, lambda d: d["annotations"][0].__setitem__("category_id", 99)),
                         ("annotation 1 (image 1): unknown category_id 99",)),
    "missing image": (_remove_first_image_file, ("image 1: file not found", "0000.png")),
    "orphan annotation": (lambda root: edit_annotations(root, lambda d: d["annotations"][0].__setitem__("image_id", 999)),
                          ("annotation 1: image id 999 is not in 'images'",)),
    "duplicate id": (lambda root: edit_annotations(root, lambda d: d["images"][1].__setitem__("id", 1)), ("image id 1 appears twice",)),
    "unreadable image": (_garble_first_image, ("0000.png (image 1 in", "cannot read this image")),
    "wrong size": (lambda root: edit_annotations(root, lambda d: d["images"][0].__setitem__("width", 70)),
                   ("0000.png (image 1 in", "the file is 64x64 but the annotations say 70x64")),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_detection_data_is_one_line_naming_file_and_id_and_writes_nothing(zoo, scenes: Path, case: str) -> None:
    damage, fragments = BAD_DATA[case]
    damage(scenes)
    assert_one_error(zoo("finetune", *ARGS, "--model", BACKBONE, "--data", scenes, "--run-dir", "run"), *fragments)
    assert not Path("run").exists()


def test_classes_the_data_lacks_are_named(zoo, scenes: Path) -> None:
    line = assert_one_error(zoo("finetune", *ARGS, "--model", BACKBONE, "--data", scenes, "--classes", "1,whiteline"))
    assert "--classes:" in line and "no class 'whiteline'" in line and "0, 1, 2" in line


def test_detection_on_class_folders_and_classification_on_coco_are_refused(zoo, scenes: Path) -> None:
    folders = write_image_folder(Path("folders"), classes=2, per_class=4, size=SIZE)
    assert_one_error(zoo("finetune", *ARGS, "--model", BACKBONE, "--data", folders), "no COCO annotations", "--task classification")
    assert_one_error(
        zoo("finetune", "--recipe", "linear-probe", "--model", BACKBONE, "--no-pretrained", "--data", scenes, "--task", "classification"),
        "holds COCO detection annotations", "--task detection",
    )
    assert_one_error(
        zoo("finetune", "--recipe", "linear-probe", "--model", BACKBONE, "--data", folders, "--detector", "fcos"),
        "--detector applies to --task detection",
    )
    assert_one_error(zoo("finetune", *ARGS, "--model", BACKBONE, "--data", scenes, "--detector", "fcoss"), "--detector 'fcoss'", "did you mean 'fcos'")
    assert not Path("runs").exists()


def test_a_detection_checkpoint_is_refused_on_classification_data(zoo, scenes: Path) -> None:
    model = zoo_core.create_model(FCOS, num_classes=3)
    from zoo_core.provenance import make_provenance

    provenance = make_provenance(model=FCOS, num_classes=3, class_names=["0", "1", "2"])
    torch.save({"model_state_dict": model.state_dict(), "provenance": {**provenance, "task": "detection"}}, "det.pt")
    folders = write_image_folder(Path("folders"), classes=3, per_class=4, size=SIZE)
    assert_one_error(zoo("eval", "det.pt", "--data", folders), "no COCO annotations")


def test_a_detector_has_no_classifier_to_find(scenes: Path) -> None:
    from zoo_core.anatomy import find_classifier

    with pytest.raises(zoo_core.errors.ZooError, match="a detector scores classes per box"):
        find_classifier(zoo_core.create_model(FCOS, num_classes=2), default_registry().plugins.hook)


def test_data_errors_are_data_errors(scenes: Path) -> None:
    edit_annotations(scenes, lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]))
    with pytest.raises(DataError, match=r"annotation 1 \(image 1\): 'bbox' must be \[x, y, width, height\]"):
        default_registry().task("detection").load_data(scenes, seed=0, val_fraction=0.2)


# --- predict --------------------------------------------------------------------------------------------------


def _classifier_checkpoint(path: Path) -> Path:
    from zoo_core.provenance import make_provenance

    torch.manual_seed(0)
    model = zoo_core.create_model(BACKBONE, num_classes=3)
    provenance = {**make_provenance(model=BACKBONE, num_classes=3, class_names=["ant", "bee", "cow"]), "task": "classification", "input": {"size": 32}}
    torch.save({"model_state_dict": model.state_dict(), "provenance": provenance}, path)
    return path


def test_predict_gives_each_image_its_top_classes_as_the_model_scores_them(zoo) -> None:
    checkpoint = _classifier_checkpoint(Path("classifier.pt"))
    folder = write_image_folder(Path("images"), classes=3, per_class=2, size=40)
    result = zoo("predict", checkpoint, folder / "train", "--top-k", "2", "--json")
    assert result.code == 0, result
    answers = json.loads(result.out)
    assert len(answers) == 6 and all(len(answer["classes"]) == 2 for answer in answers)
    loaded = zoo_core.load_model(checkpoint)
    first = Path(answers[0]["image"])
    from zoo_classification.task import read_image

    with torch.no_grad():
        expected = loaded.model(loaded.transform(read_image(first, 3))[None]).softmax(dim=1)[0]
    top = expected.topk(2)
    assert [c["name"] for c in answers[0]["classes"]] == [loaded.class_names[i] for i in top.indices.tolist()]
    assert [c["probability"] for c in answers[0]["classes"]] == pytest.approx(top.values.tolist(), abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (("--threshold", "2"), ("--threshold must be between 0 and 1, got 2.0",)),
        (("-o", "drawn"), ("-o draws boxes", "task 'classification' predicts none")),
    ],
)
def test_predict_refuses_what_it_cannot_do_in_one_line(zoo, extra, fragments) -> None:
    checkpoint = _classifier_checkpoint(Path("classifier.pt"))
    folder = write_image_folder(Path("images"), classes=3, per_class=1, size=40)
    assert_one_error(zoo("predict", checkpoint, folder, *extra), *fragments)
    assert not Path("drawn").exists()


def test_predict_names_a_missing_image(zoo) -> None:
    checkpoint = _classifier_checkpoint(Path("classifier.pt"))
    assert_one_error(zoo("predict", checkpoint, "nowhere.png"), "nowhere.png: no such image or folder")


def test_a_composed_name_needs_a_tier_after_the_plus(zoo) -> None:
    assert_one_error(zoo("info", "timm:resnet10t+timm:resnet18"), "'timm:resnet18' is not a tier", "BACKBONE+TIER")
    shown = zoo("info", "timm:resnet10t+detector/retinanet", "--groups", "--num-classes", "2")
    assert shown.code == 0 and "heads.detect" in shown.out and "neck" in shown.out


@pytest.mark.parametrize(
    ("detector", "train"),
    [("fcos", '["head"]'), ("fasterrcnn", '["head"]'), ("fcos", '["head", "neck"]')],
    ids=["fcos-head-over-cached-fpn", "fasterrcnn-head-over-cached-fpn", "fcos-neck-and-head-over-cached-maps"],
)
def test_a_stage_over_cached_features_ends_with_the_same_weights(zoo, scenes: Path, detector: str, train: str) -> None:
    Path("zoo.toml").write_text(RECIPE + f"""
[recipes.det-heads]
task = "detection"
batch_size = 4
[[recipes.det-heads.stages]]
name = "heads"
epochs = 2
train = {train}
lr = 1e-3
""")
    common = ("--recipe", "det-heads", "--no-pretrained", "--image-size", str(SIZE), "--model", BACKBONE, "--detector", detector, "--data", scenes)
    assert zoo("finetune", *common, "--run-dir", "cached").code == 0
    assert zoo("finetune", *common, "--run-dir", "plain", "--no-cache").code == 0
    rows = {name: [json.loads(line) for line in Path(name, "metrics.jsonl").read_text().splitlines()] for name in ("cached", "plain")}
    assert [row["cached"] for row in rows["cached"]] == [True, True] and [row["cached"] for row in rows["plain"]] == [False, False]
    assert [row["map"] for row in rows["cached"]] == [row["map"] for row in rows["plain"]]
    cached, plain = (torch.load(Path(name, "checkpoints", "last.pt"), weights_only=True)["model_state_dict"] for name in ("cached", "plain"))
    assert_same_tensors(cached, plain)


@pytest.mark.parametrize("backbone", [BACKBONE, "torchvision:resnet18"])
def test_a_copy_of_a_detector_takes_its_maps_from_its_own_backbone(backbone: str) -> None:
    """EMA keeps a deep copy: the copy's feature maps must come from the copy's weights, not the original's."""
    import copy

    model = zoo_core.create_model(f"{backbone}+detector/fcos", num_classes=2)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for param in twin.backbone.parameters():
            param.zero_()
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert float(twin.forward_features(images)[0].abs().sum()) == 0.0
        assert float(model.forward_features(images)[0].abs().sum()) > 0.0


def test_a_classifier_checkpoint_given_for_detection_names_the_transfer_that_makes_a_detector(zoo, scenes: Path) -> None:
    checkpoint = _classifier_checkpoint(Path("classifier.pt"))
    line = assert_one_error(zoo("finetune", *ARGS, "--model", checkpoint, "--data", scenes, "--run-dir", "run"))
    assert "holds a timm:resnet10t classifier, not a detector" in line and "zoo transfer classifier.pt --to timm:resnet10t+detector/fcos" in line
    assert not Path("run").exists()


def test_a_reversed_scale_jitter_range_is_refused_naming_the_setting() -> None:
    from zoo_detection.data import sample_transform

    with pytest.raises(DataError, match=r"augment.scale_jitter: the scale range must be positive and ordered, got \[1.4, 0.6\]"):
        sample_transform(InputConfig(size=SIZE), {"scale_jitter": [1.4, 0.6]})


@pytest.mark.parametrize(
    ("neck", "message"),
    [('{ kind = "fpn", levels = 9 }', "fpn neck: levels must be between 1 and 5"), ('{ kind = "fpn", extra = "p8" }', "extra must be 'p6p7', 'pool' or 'none'")],
)
def test_a_bad_fpn_setting_in_a_detector_tier_is_one_line(zoo, neck: str, message: str) -> None:
    Path("zoo.toml").write_text(f"""
[families.bad-det]
builder = "zoo_detection.model:build_detector"
[families.bad-det.tiers.t1]
rank = 0
backbone = "timm:resnet10t"
neck = {neck}
heads = {{ detect = {{ kind = "fcos" }} }}
""")
    assert_one_error(zoo("info", "bad-det/t1", "--groups", "--num-classes", "2"), message)
