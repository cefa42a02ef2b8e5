"""MultiGridDet's grid head (``--detector multigrid``): which cells and anchors an object is
assigned to, when each loss component is zero, how scales and ``loss_norm`` combine, and the
bad input around it (exit 2, one line, nothing written)."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import assert_one_error
from zoo_detection.multigrid import DEFAULT_SCALES, MultiGridHead, iol
from zoo_detection.scenes import write_digit_scenes

import zoo_core
from zoo_core.provenance import make_provenance
from zoo_core.registry import default_registry

BACKBONE = "timm:resnet10t"
MULTIGRID = f"{BACKBONE}+detector/multigrid"
SIZE = 64
STRIDES = (8, 16, 32)


def head(radius: int = 1, strides=STRIDES, classes: int = 3) -> MultiGridHead:
    torch.manual_seed(0)
    return MultiGridHead(8, classes, strides=strides, radius=radius)


def levels(strides=STRIDES, batch: int = 1) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(1)
    return OrderedDict((str(i), torch.randn(batch, 8, SIZE // s, SIZE // s)) for i, s in enumerate(strides))


def assignment(grid_head: MultiGridHead, boxes: list[list[float]], strides=STRIDES):
    features = list(levels(strides).values())
    grid = grid_head._grid(features, torch.device("cpu"))
    return grid_head.assign(torch.tensor(boxes), grid, (SIZE, SIZE))


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


# --- the assignment ---------------------------------------------------------------------------------------------


def test_a_box_is_assigned_to_its_centre_cell_and_the_3x3_around_it_on_its_level_and_anchor() -> None:
    # 32x32 is the square anchor of stride 8 (anchor_scale 4): level 0 (8x8 cells), anchor 1 (ratio 1)
    found = assignment(head(), [[20.0, 4.0, 52.0, 36.0]])  # centre (36, 20): cell column 4, row 2
    cells = sorted(found.cells.tolist())
    assert cells == sorted(row * 8 + column for row in (1, 2, 3) for column in (3, 4, 5))
    assert found.anchors.tolist() == [1] * 9 and found.boxes.tolist() == [0] * 9
    by_cell = dict(zip(found.cells.tolist(), found.offsets.tolist()))
    assert by_cell[2 * 8 + 4] == [0.5, 0.5]  # the centre cell: the centre sits in its middle
    assert by_cell[1 * 8 + 3] == [1.5, 1.5]  # a neighbour above-left: the centre lies 1.5 cells right and down
    assert torch.equal(found.log_sizes, torch.zeros(9, 2))  # the box is exactly its anchor's size


def test_radius_0_assigns_the_centre_cell_only_and_the_image_edge_clips_the_neighbourhood() -> None:
    assert assignment(head(radius=0), [[20.0, 4.0, 52.0, 36.0]]).cells.tolist() == [2 * 8 + 4]
    corner = assignment(head(), [[0.0, 0.0, 30.0, 30.0]])  # centre in cell (1, 1): all nine cells exist
    assert sorted(corner.cells.tolist()) == sorted(r * 8 + c for r in (0, 1, 2) for c in (0, 1, 2))
    edge = assignment(head(), [[0.0, 0.0, 12.0, 36.0]])  # centre x 6: column 0, no column -1
    assert {cell % 8 for cell in edge.cells.tolist()} == {0, 1}


def test_tall_and_large_boxes_go_to_the_anchor_and_level_whose_shape_they_overlap_most() -> None:
    tall = assignment(head(), [[24.0, 0.0, 40.0, 64.0]])  # 16x64: the tall (ratio 2) anchor of stride 8
    assert set(tall.anchors.tolist()) == {2} and max(tall.cells.tolist()) < 64
    large = assignment(head(), [[0.0, 0.0, 64.0, 64.0]])  # 64x64: the square anchor of stride 16 (4x4 cells)
    assert set(large.anchors.tolist()) == {1} and all(64 <= cell < 64 + 16 for cell in large.cells.tolist())
    sizes = torch.tensor([[16.0, 64.0]])
    anchors = torch.tensor([[32 / math.sqrt(2), 32 * math.sqrt(2)], [64 / math.sqrt(2), 64 * math.sqrt(2)]])
    assert iol(sizes, anchors).argmax().item() == 0  # intersection over the larger area, not IoU


def test_a_cell_two_boxes_claim_predicts_the_smaller() -> None:
    small, large = [26.0, 10.0, 46.0, 30.0], [20.0, 4.0, 52.0, 36.0]  # same level, centres in cell (4, 2)
    found = assignment(head(), [large, small])
    owners = dict(zip(found.cells.tolist(), found.boxes.tolist()))
    assert len(owners) == len(found.cells)  # every cell predicts one object
    assert owners[2 * 8 + 4] == 1  # the shared centre cell: the smaller box (index 1)
    assert set(owners.values()) == {1}  # the small box's 3x3 covers the large one's: it keeps them all


def test_an_image_without_boxes_has_no_assigned_cells() -> None:
    found = assignment(head(), [])
    assert found.cells.numel() == 0 and found.offsets.shape == (0, 2)


# --- the loss components ---------------------------------------------------------------------------------------


def test_without_objects_only_no_object_is_positive() -> None:
    grid_head = head().train()
    losses = {
        name: value.detach() for name, value in grid_head((SIZE, SIZE), levels(), [target([], [])]).losses.items()
    }
    assert set(losses) == set(DEFAULT_SCALES)
    assert {name: float(value) for name, value in losses.items() if name != "no_object"} == dict.fromkeys(
        ["coord", "object", "class", "anchor"], 0.0
    )
    assert float(losses["no_object"]) > 0


def test_with_an_object_every_component_is_positive() -> None:
    losses = head().train()((SIZE, SIZE), levels(), [target([[20.0, 4.0, 52.0, 36.0]], [2])]).losses
    assert all(float(value.detach()) > 0 for value in losses.values()), losses


def test_no_object_is_zero_when_every_cell_is_assigned() -> None:
    # one level of 2x2 cells (stride 32) and a box at the centre: its 3x3 neighbourhood covers all four
    grid_head = head(strides=(32,)).train()
    losses = grid_head((SIZE, SIZE), levels(strides=(32,)), [target([[0.0, 0.0, 64.0, 64.0]], [0])]).losses
    assert float(losses["no_object"].detach()) == 0.0 and float(losses["object"].detach()) > 0


def test_no_object_ignores_cells_whose_box_already_overlaps_an_object() -> None:
    grid_head = head().train()
    box = [[20.0, 4.0, 52.0, 36.0]]
    plain = grid_head((SIZE, SIZE), levels(), [target(box, [0])]).losses["no_object"].detach()
    grid_head.ignore_thresh = -1.0  # every cell counts as already overlapping: none is told "no object"
    assert float(plain) > 0 and float(grid_head((SIZE, SIZE), levels(), [target(box, [0])]).losses["no_object"].detach()) == 0.0


def _outputs(batch: int = 2):
    grid_head = head().train()
    targets = [target([[20.0, 4.0, 52.0, 36.0], [0.0, 30.0, 20.0, 60.0]], [2, 0]), target([], [])][:batch]
    return grid_head((SIZE, SIZE), levels(batch=batch), targets)


def test_loss_scales_multiply_exactly_over_the_guides_defaults() -> None:
    task = default_registry().task("detection")
    outputs = _outputs()
    batch_images = outputs.normalisers["batch"]
    per_image = {name: value / batch_images[name] for name, value in outputs.losses.items()}
    plain = task.loss(outputs, None, loss_scales={}, recipe=None)
    assert torch.equal(plain["loss"], sum(value * DEFAULT_SCALES[name] for name, value in per_image.items()))
    scales = {**DEFAULT_SCALES, "coord": 2.0, "no_object": 0.0}
    scaled = task.loss(outputs, None, loss_scales={"coord": 2.0, "no_object": 0.0}, recipe=None)
    assert torch.equal(scaled["loss"], sum(value * scales[name] for name, value in per_image.items()))
    assert all(torch.equal(scaled[name], per_image[name]) for name in per_image)  # components are reported unweighted


@pytest.mark.parametrize("modes", [["batch"], ["batch", "positives"], ["grid"]])
def test_loss_norm_modes_divide_as_they_say(modes: list[str]) -> None:
    task = default_registry().task("detection")
    outputs = _outputs()
    found = task.loss(outputs, None, loss_scales={}, loss_norm=modes, recipe=None)
    images, cells = 2.0, 2.0 * sum((SIZE // s) ** 2 for s in STRIDES)
    positives = float(outputs.normalisers["positives"]["object"]) * images  # assigned cells in the batch
    for name, total in ((name, value.detach()) for name, value in outputs.losses.items()):
        expected = float(total) / {"batch": images, "grid": cells}.get(modes[0], images)
        if "positives" in modes and name != "no_object":
            expected = float(total) / positives  # per image, then per image's assigned cells
        assert float(found[name]) == pytest.approx(expected, rel=1e-6), name
    assert positives == 18.0  # two boxes on separate cells, 3x3 each


# --- the detector: decoding, class rows ------------------------------------------------------------------------------


def test_a_multigrid_detector_decodes_boxes_inside_the_image_and_maps_class_rows_by_name(tmp_path: Path) -> None:
    model = zoo_core.create_model(MULTIGRID, num_classes=3).eval()
    assert model.loss_names == ("coord", "object", "no_object", "class", "anchor")
    model.heads["detect"].score_thresh = 0.0  # a new head scores about PRIOR**2, below the default threshold
    with torch.no_grad():
        found = model(torch.randn(2, 3, SIZE, SIZE)).detections
    assert len(found) == 2 and all(d["boxes"].shape[1] == 4 for d in found)
    boxes = torch.cat([d["boxes"] for d in found])
    assert boxes.numel() and boxes.min() >= 0 and boxes.max() <= SIZE
    torch.save({"model_state_dict": model.state_dict(), "provenance": make_provenance(model=MULTIGRID, num_classes=3,
               class_names=["a", "b", "c"])}, tmp_path / "three.pt")  # fmt: skip
    target_model = zoo_core.create_model(MULTIGRID, num_classes=1)
    plan = zoo_core.plan_transfer(tmp_path / "three.pt", target_model, target_classes=["b"])
    plan.apply(target_model)
    remapped = {entry.target for entry in plan.entries if entry.action.value == "remap-classes"}
    assert remapped == {"heads.detect.classes.weight", "heads.detect.classes.bias"}
    assert torch.equal(
        target_model.state_dict()["heads.detect.classes.bias"], model.state_dict()["heads.detect.classes.bias"][1:2]
    )


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.fixture
def scenes(isolated: Path) -> Path:
    write_digit_scenes(isolated / "scenes" / "train", 4, seed=0, size=SIZE, digit=20, digits=(0, 1))
    write_digit_scenes(isolated / "scenes" / "val", 2, seed=1, size=SIZE, digit=20, digits=(0, 1))
    return isolated / "scenes"


RUN = ("--task", "detection", "--recipe", "multigriddet-backbone", "--image-size", str(SIZE), "--set", "batch_size=2",
       "--set", "stages.*.epochs=1", "--run-dir", "run")  # fmt: skip


@pytest.mark.parametrize(
    "model, extra, expected",
    [
        (BACKBONE, ("--detector", "multigrid", "--set", "stages.0.loss_scales.box=2"),
         "recipe 'multigriddet-backbone' stages[0].loss_scales.box: the detector's losses are coord, object, no_object, class, anchor; scale one of those"),
        (BACKBONE, ("--detector", "multigrid", "--set", 'stages.1.loss_norm=["positive"]'),
         "--set (recipe 'multigriddet-backbone'): stages[1].loss_norm: unknown mode 'positive'; the modes are batch, positives, grid"),
        (BACKBONE, ("--detector", "multigrid", "--set", 'stages.1.loss_norm=["positives"]'),
         "--set (recipe 'multigriddet-backbone'): stages[1].loss_norm: positives divides per image's assigned cells and goes with batch"),
        (BACKBONE, ("--set", 'stages.0.loss_norm=["batch"]'),
         "recipe 'multigriddet-backbone' stages[0].loss_norm: this detector's head normalises its own losses"),
    ],
    ids=["unknown-component", "unknown-norm-mode", "positives-without-batch", "norm-on-fcos"],
)  # fmt: skip
def test_loss_settings_the_head_cannot_honour_are_one_line_and_write_nothing(
    zoo, scenes: Path, model, extra, expected
) -> None:
    result = zoo("finetune", "--model", model, "--no-pretrained", "--data", scenes, *RUN, *extra)
    assert_one_error(result, expected)
    assert not Path("run").exists()


def _classifier_backbone(tmp_path: Path, zoo) -> Path:
    classifier = zoo_core.create_model(BACKBONE, num_classes=4)
    provenance = make_provenance(model=BACKBONE, num_classes=4, class_names=list("abcd"))
    torch.save({"model_state_dict": classifier.state_dict(), "provenance": provenance}, tmp_path / "classifier.pt")
    assert (
        zoo("export", tmp_path / "classifier.pt", "--backbone-only", "-o", tmp_path / "backbone.safetensors").code == 0
    )
    return tmp_path / "backbone.safetensors"


def test_a_backbone_export_that_does_not_fit_its_backbone_says_how_much_fits(zoo, scenes: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(_classifier_backbone(tmp_path, zoo), "pt") as source:
        kept = {key: source.get_tensor(key) for key in source.keys() if not key.startswith("layer4.")}
        save_file(kept, tmp_path / "partial.safetensors", metadata=source.metadata())
    result = zoo(
        "finetune", "--model", tmp_path / "partial.safetensors", "--detector", "multigrid", "--data", scenes, *RUN
    )
    line = assert_one_error(
        result, f"{tmp_path / 'partial.safetensors'}: fits 66 of 84 backbone tensors of timm:resnet10t"
    )
    assert "18 missing, e.g. layer4.0.conv1.weight" in line and "zoo export CKPT --backbone-only" in line
    assert not Path("run").exists()


def test_a_backbone_export_starts_the_backbone_of_a_new_multigrid_detector(zoo, scenes: Path, tmp_path: Path) -> None:
    backbone = _classifier_backbone(tmp_path, zoo)
    from zoo_core.engine.api import prepare
    from zoo_core.engine.options import RunOptions

    run = prepare(
        RunOptions(recipe="multigriddet-backbone", model=str(backbone), data=scenes, task="detection",
                                           detector="multigrid", run_dir=Path("run"), image_size=SIZE),
        registry=default_registry(),
    )  # fmt: skip
    assert run.plan.model.endswith("backbone.safetensors+detector/multigrid")
    from safetensors.torch import load_file

    state = run.model.state_dict()
    assert all(torch.equal(state[f"backbone.{key}"], value) for key, value in load_file(backbone).items())
    assert run.context.provenance["model"] == "timm:resnet10t.c3_in1k+detector/multigrid"  # rebuilt without the file
    assert run.context.provenance["base_model"] == f"file:{backbone.resolve()}"


def test_a_detector_backbone_export_is_pointed_at_zoo_transfer(zoo, scenes: Path, tmp_path: Path) -> None:
    detector = zoo_core.create_model(f"{BACKBONE}+detector/fcos", num_classes=2)
    provenance = make_provenance(model=f"{BACKBONE}+detector/fcos", num_classes=2, class_names=["a", "b"])
    torch.save({"model_state_dict": detector.state_dict(), "provenance": provenance}, tmp_path / "fcos.pt")
    assert (
        zoo("export", tmp_path / "fcos.pt", "--backbone-only", "-o", tmp_path / "fcos-backbone.safetensors").code == 0
    )
    result = zoo(
        "finetune", "--model", tmp_path / "fcos-backbone.safetensors", "--detector", "multigrid", "--data", scenes, *RUN
    )
    line = assert_one_error(result, "")
    assert "holds the backbone of a" in line and "zoo transfer" in line and "+detector/KIND" in line
