"""MultiGridDet's guide end to end (slow): both scenarios on digit scenes through the CLI, the
report after them, and a kill between stages that resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import InterruptAt, nested_tensors
from safetensors.torch import load_file
from zoo_detection.scenes import write_digit_scenes

import zoo_core
from zoo_core.provenance import make_provenance

pytestmark = pytest.mark.slow

BACKBONE = "timm:resnet10t"
SIZE = 64
ONE_EPOCH = ("--image-size", str(SIZE), "--set", "stages.*.epochs=1", "--set", "batch_size=4")


@pytest.fixture
def scenes(isolated: Path) -> Path:
    write_digit_scenes(isolated / "scenes" / "train", 12, seed=0, size=SIZE, digit=20, digits=(0, 1, 2))
    write_digit_scenes(isolated / "scenes" / "val", 4, seed=1, size=SIZE, digit=20, digits=(0, 1, 2))
    return isolated / "scenes"


def rows_of(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def test_from_full_model_weights_the_guides_three_stages_then_the_report(zoo, scenes: Path) -> None:
    pretrain = zoo("finetune", "--task", "detection", "--recipe", "multigriddet-backbone", "--model", BACKBONE, "--detector", "multigrid",
                   "--no-pretrained", "--data", scenes, "--run-dir", "pretrain", *ONE_EPOCH)  # fmt: skip
    assert pretrain.code == 0, pretrain
    result = zoo("finetune", "--task", "detection", "--recipe", "multigriddet-full", "--model", "pretrain/checkpoints/best.pt",
                 "--data", scenes, "--run-dir", "full", *ONE_EPOCH)  # fmt: skip
    assert result.code == 0, result
    assert "warning" not in result.err.lower()  # the guide's own recipe raises none of its warnings
    rows = rows_of("full")
    assert [row["trainable"][-2:] for row in rows] == [
        ["heads.detect"],
        ["neck", "heads.detect"],
        ["neck", "heads.detect"],
    ]
    assert "stem" in rows[2]["trainable"]
    assert [row["lr/heads.detect"] for row in rows] == [1e-4, 5e-5, 3e-5]
    assert all(
        f"val_{name}" in rows[0] and f"drift/{name}" in rows[0]
        for name in ("coord", "object", "no_object", "class", "anchor")
    )
    report = zoo("report", "full", "--json")
    assert report.code in (0, 1), report  # 1 when a check fails: tiny data may move a loss out of the band
    summary = json.loads(report.out)
    assert report.code == (0 if summary["passed"] else 1)
    checks = {check["check"]: check for check in summary["checks"]}
    for name in ("object", "class"):
        line = checks[f"{name} within +20% of its starting value in stages 0, 1"]
        assert line["passed"] in (True, False) and line["detail"].startswith("highest ")
    assert checks["no non-finite loss or skipped step"]["passed"] is True
    text = zoo("report", "full").out
    assert "0  heads  1/1     0.0001" in text and "mixup=0.1, mosaic=0.3" in text
    best = rows[summary["best"]["epoch"] - 1]
    evaluated = json.loads(zoo("eval", "full/checkpoints/best.pt", "--data", scenes, "--json").out)
    assert evaluated["map"] == pytest.approx(best["map"], abs=1e-9) and evaluated["val_loss"] == pytest.approx(
        best["val_loss"], rel=1e-5
    )
    predicted = zoo("predict", "full/checkpoints/last.pt", scenes / "val", "--threshold", "0", "--top-k", "3", "--json")
    assert predicted.code == 0 and all(len(answer["boxes"]) <= 3 for answer in json.loads(predicted.out))


def test_from_backbone_only_weights_the_backbone_starts_from_the_file(zoo, scenes: Path, tmp_path: Path) -> None:
    classifier = zoo_core.create_model(BACKBONE, num_classes=5)
    torch.save({"model_state_dict": classifier.state_dict(),
                "provenance": make_provenance(model=BACKBONE, num_classes=5, class_names=list("abcde"))}, tmp_path / "cls.pt")  # fmt: skip
    assert zoo("export", tmp_path / "cls.pt", "--backbone-only", "-o", "backbone.safetensors").code == 0
    result = zoo("finetune", "--task", "detection", "--recipe", "multigriddet-backbone", "--model", "backbone.safetensors",
                 "--detector", "multigrid", "--data", scenes, "--run-dir", "bb", "--keep", "last,best,stages", *ONE_EPOCH)  # fmt: skip
    assert result.code == 0, result
    # stage 0 trains neck and head with the backbone frozen (its batch-norm statistics too): after it,
    # every backbone tensor is still the file's, bit for bit
    stage = torch.load(Path("bb/checkpoints/stage-0-frozen-backbone.pt"), weights_only=True)["model_state_dict"]
    assert all(torch.equal(stage[f"backbone.{key}"], value) for key, value in load_file("backbone.safetensors").items())
    provenance = json.loads(Path("bb/provenance.json").read_text())
    assert provenance["model"].endswith("+detector/multigrid") and provenance["base_model"].endswith(
        "backbone.safetensors"
    )
    Path("backbone.safetensors").unlink()  # the trained detector does not need the file it started from
    assert zoo("eval", "bb/checkpoints/best.pt", "--data", scenes).code == 0


def test_a_kill_between_the_guides_stages_resumes_to_the_same_weights(scenes: Path, make_registry) -> None:
    from zoo_core.engine.api import finetune

    choices = {"pretrained": False, "image_size": SIZE, "task": "detection", "detector": "multigrid",
               "overrides": ["stages.*.epochs=1", "batch_size=4"]}  # fmt: skip
    finetune("multigriddet-full", BACKBONE, scenes, run_dir="reference", registry=make_registry(), **choices)
    with pytest.raises(KeyboardInterrupt):  # after stage 0's only epoch: the boundary between stages
        finetune(
            "multigriddet-full", BACKBONE, scenes, run_dir="resumed", registry=make_registry(InterruptAt(0)), **choices
        )
    finetune("multigriddet-full", BACKBONE, scenes, run_dir="resumed", resume=True, registry=make_registry(), **choices)
    ours = dict(nested_tensors(torch.load("resumed/checkpoints/last.pt", weights_only=True)))
    theirs = dict(nested_tensors(torch.load("reference/checkpoints/last.pt", weights_only=True)))
    assert ours.keys() == theirs.keys()
    assert [key for key in theirs if not torch.equal(ours[key], theirs[key])] == []
    assert [row["val_loss"] for row in rows_of("resumed")] == [row["val_loss"] for row in rows_of("reference")]
