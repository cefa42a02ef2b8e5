"""The feature cache: a head-only stage over a frozen, deterministic trunk computes trunk features
once and reuses them; the results are those of running without the cache. It stays off when
inputs are random or when anything outside the heads trains (or BatchNorm statistics move).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_image_folder

MODEL = "timm:test_resnet"
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8")


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def probes(workspace: Path) -> tuple[Path, Path]:
    """The same three-epoch linear probe with the feature cache and with --no-cache."""
    from zoo_core.engine.api import finetune

    data = write_image_folder(workspace / "data", classes=3, per_class=8)
    runs = []
    for name, use_cache in (("cached", True), ("uncached", False)):
        finetune(
            "linear-probe", MODEL, data, run_dir=workspace / name, overrides=["stages.0.epochs=3", "batch_size=8"],
            pretrained=False, image_size=32, use_cache=use_cache,
        )  # fmt: skip
        runs.append(workspace / name)
    return runs[0], runs[1]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", classes=3, per_class=8)


def test_head_only_stage_uses_the_cache(probes):
    cached, uncached = probes
    assert [row["cached"] for row in read_rows(cached)] == [True, True, True]
    assert [row["cached"] for row in read_rows(uncached)] == [False, False, False]


def test_cached_run_ends_with_the_weights_of_an_uncached_run(probes):
    cached, uncached = (final_weights(run) for run in probes)
    assert cached.keys() == uncached.keys()
    for key in cached:
        assert torch.allclose(cached[key].double(), uncached[key].double(), rtol=1e-4, atol=1e-6), key
    previous = torch.load(probes[0] / "checkpoints" / "last.prev.pt", weights_only=True)["model_state_dict"]
    assert not torch.equal(previous["fc.weight"], cached["fc.weight"])  # the head did train


def test_cached_run_reports_the_metrics_of_an_uncached_run(probes):
    for ours, theirs in zip(*(read_rows(run) for run in probes), strict=True):
        for key in ("train_loss", "val_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
        for key in ("accuracy", "f1_macro", "step"):
            assert ours[key] == theirs[key], key


def test_frozen_trunk_is_bitwise_unchanged_with_and_without_the_cache(probes):
    cached, uncached = (final_weights(run) for run in probes)
    trunk = [key for key in cached if not key.startswith("fc.")]
    assert trunk and all(torch.equal(cached[key], uncached[key]) for key in trunk)


@pytest.mark.parametrize(
    "override, reason",
    [
        ("stages.0.augment.hflip=0.5", "the stage's input transforms are random"),
        ("stages.0.augment.mixup=0.5", "the stage's input transforms are random"),
        ("stages.0.freeze=0", "layers outside the heads train"),
        ("stages.0.freeze=1", None),  # test_resnet has no neck: level 1 trains only the head, so the cache stays on
        ("stages.0.bn=train", "updates BatchNorm statistics"),
    ],
    ids=["hflip", "mixup", "all-layers-train", "backbone-frozen", "bn-statistics-move"],
)
def test_cache_is_used_only_when_it_cannot_change_results(zoo, data, override, reason):
    result = zoo(
        "finetune", "--recipe", "linear-probe", "--model", MODEL, "--data", data, "--run-dir", "run", *FAST,
        "--set", "stages.0.epochs=1", "--set", override,
    )  # fmt: skip
    assert result.code == 0, result
    (row,) = read_rows(Path("run"))
    if reason is None:
        assert row["cached"] is True
        assert "over cached trunk features" in result.err
    else:
        assert row["cached"] is False
        (line,) = [line for line in result.err.splitlines() if "feature cache off: " in line]
        assert reason in line


def test_cache_follows_the_stages_of_a_recipe(zoo, data):
    result = zoo(
        "finetune", "--recipe", "multigriddet-full", "--model", MODEL, "--data", data, "--run-dir", "run", *FAST,
        "--set", "stages.*.epochs=1", "--set", "stages.*.augment={}",
    )  # fmt: skip
    assert result.code == 0, result
    # heads only, then (no neck) still heads only, then every layer
    assert [row["cached"] for row in read_rows(Path("run"))] == [True, True, False]
