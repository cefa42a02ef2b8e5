"""Detection runs end to end (slow): seed 001's pipeline through the CLI, exact resume, two
processes, predict, and ``zoo demo detection --quick`` on the bundled tree crowns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import InterruptAt, nested_tensors
from PIL import Image
from zoo_detection.scenes import write_digit_scenes

import zoo_core

pytestmark = pytest.mark.slow

BACKBONE = "timm:resnet10t"
SIZE = 64
CATALOG = """
[families.tiny-det]
builder = "zoo_detection.model:build_detector"
[families.tiny-det.tiers.t1]
rank = 0
backbone = "timm:resnet10t"
neck = { kind = "fpn", out_channels = 32 }
heads = { detect = { kind = "fcos", num_convs = 1 } }

[recipes.det-two]
task = "detection"
batch_size = 4
[[recipes.det-two.stages]]
name = "heads"
epochs = 2
train = ["head"]
lr = 1e-3
[[recipes.det-two.stages]]
name = "all"
epochs = 2
lr = { head = 1e-3, neck = 5e-4, backbone = 1e-4 }
augment = { hflip = 0.5, mosaic = 0.5 }
"""
ARGS = ("--recipe", "det-two", "--no-pretrained", "--image-size", str(SIZE))


@pytest.fixture
def project(isolated: Path) -> Path:
    Path("zoo.toml").write_text(CATALOG)
    write_digit_scenes(isolated / "multi" / "train", 12, seed=0, size=SIZE, digit=20, digits=(0, 1, 2))
    write_digit_scenes(isolated / "multi" / "val", 4, seed=1, size=SIZE, digit=20, digits=(0, 1, 2))
    return isolated


def final_state(run_dir: Path) -> dict:
    return dict(nested_tensors(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)))


def test_seed_001_pipeline_is_a_handful_of_commands(zoo, project: Path) -> None:
    # 1. pretrain on multi-class data; 2. keep the backbone; 3. fine-tune one class in stages; 4. evaluate; 5. predict
    assert zoo("finetune", *ARGS, "--model", "tiny-det/t1", "--data", "multi", "--run-dir", "pretrain").code == 0
    assert zoo("export", "pretrain/checkpoints/best.pt", "--backbone-only", "-o", "backbone.safetensors").code == 0
    result = zoo("finetune", *ARGS, "--model", "pretrain/checkpoints/best.pt", "--classes", "1", "--data", "multi", "--run-dir", "one")
    assert result.code == 0, result
    assert "remap-classes" in result.out  # the class-aware plan was shown: class "1" kept its rows
    transfer = json.loads(Path("one/transfer.json").read_text())
    assert transfer["counts"]["remap-classes"] == 2
    evaluated = json.loads(zoo("eval", "one/checkpoints/best.pt", "--data", "multi", "--json").out)
    assert {"map", "map_50", "precision", "recall", "f1"} <= set(evaluated)
    predicted = zoo("predict", "one/checkpoints/best.pt", "multi/val", "--threshold", "0.0", "--top-k", "2", "--json", "-o", "drawn")
    assert predicted.code == 0, predicted
    answers = json.loads(predicted.out)
    assert len(answers) == 4 and all(len(answer["boxes"]) == 2 for answer in answers)
    assert all(found["class"] == "1" and 0 <= found["box"][0] < found["box"][2] <= SIZE for a in answers for found in a["boxes"])
    assert sorted(p.name for p in Path("drawn").iterdir()) == sorted(Path(a["image"]).stem + ".png" for a in answers)
    assert Image.open("drawn/0000.png").size == (SIZE, SIZE)
    loaded = zoo_core.load_model("one/checkpoints/best.pt")
    assert loaded.class_names == ("1",) and not loaded.model.training


def test_an_interrupted_detection_run_resumes_to_the_same_weights(project: Path, make_registry) -> None:
    from zoo_core.engine.api import finetune

    choices = {"pretrained": False, "image_size": SIZE, "task": "detection"}
    finetune("det-two", "tiny-det/t1", "multi", run_dir="reference", registry=make_registry(files=[Path("zoo.toml")]), **choices)
    with pytest.raises(KeyboardInterrupt):
        finetune("det-two", "tiny-det/t1", "multi", run_dir="resumed", registry=make_registry(InterruptAt(2), files=[Path("zoo.toml")]), **choices)
    finetune("det-two", "tiny-det/t1", "multi", run_dir="resumed", resume=True, registry=make_registry(files=[Path("zoo.toml")]), **choices)
    ours, theirs = final_state(Path("resumed")), final_state(Path("reference"))
    assert ours.keys() == theirs.keys()
    assert [key for key in theirs if not torch.equal(ours[key], theirs[key])] == []


def test_two_processes_train_a_detector(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zoo_core", "finetune", *ARGS, "--model", "tiny-det/t1", "--data", "multi", "--run-dir", "ddp", "--nproc", "2"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in Path("ddp/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and json.loads(Path("ddp/run.json").read_text())["world_size"] == 2
    assert all("map" in row and "train_bbox_ctrness" in row for row in rows)


def test_the_detection_demo_runs_on_the_bundled_tree_crowns(zoo, isolated: Path) -> None:
    result = zoo("demo", "detection", "--quick", "--out", "demo", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert [arm["arm"] for arm in summary["arms"]] == ["transfer", "scratch"]
    assert summary["data"]["target"] == "DeepForest tree crowns (real)"
    assert all(arm["epochs"] == 3 and 0.0 <= arm["map"] <= 1.0 for arm in summary["arms"])
    provenance = json.loads(Path("demo/runs/transfer/provenance.json").read_text())
    assert provenance["class_names"] == ["Tree"] and provenance["parent"]["path"].endswith("best.pt")
