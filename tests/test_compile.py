"""``--compile``: the engine recompiles at each stage change, so layers unfrozen in a later stage
really train (pytorch #139476: a graph captured while they were frozen treats them as constants).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_image_folder

pytestmark = pytest.mark.slow

MODEL = "timm:test_resnet"


@pytest.fixture(scope="module")
def runs(workspace: Path) -> dict[str, Path]:
    """multigriddet-backbone (backbone frozen, then every layer), compiled with aot_eager and eager."""
    from zoo_core.engine.api import finetune

    data = write_image_folder(workspace / "data", classes=3, per_class=8)
    folders = {}
    for name, backend in (("compiled", "aot_eager"), ("eager", None)):
        folders[name] = workspace / name
        finetune(
            "multigriddet-backbone", MODEL, data, run_dir=folders[name], overrides=["stages.*.epochs=1", "batch_size=8"],
            pretrained=False, image_size=32, compile_backend=backend, keep=("last", "best", "stages"),
        )  # fmt: skip
    return folders


def load(run_dir: Path, name: str) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)


def test_layers_unfrozen_in_stage_2_train_under_compile(runs):
    stage_one, stage_two = load(runs["compiled"], "stage-0-frozen-backbone"), load(runs["compiled"], "stage-1-all")
    newly_unfrozen = stage_one["frozen_layers"]
    assert newly_unfrozen and all(not name.startswith("fc.") for name in newly_unfrozen)
    assert stage_two["frozen_layers"] == []
    unchanged = [
        name
        for name in newly_unfrozen
        if torch.equal(stage_one["model_state_dict"][name], stage_two["model_state_dict"][name])
    ]
    assert not unchanged, unchanged


@pytest.mark.parametrize("checkpoint", ["stage-0-frozen-backbone", "stage-1-all"])
def test_compiled_stages_end_where_eager_stages_end(runs, checkpoint):
    compiled = load(runs["compiled"], checkpoint)["model_state_dict"]
    eager = load(runs["eager"], checkpoint)["model_state_dict"]
    assert compiled.keys() == eager.keys()
    for name in eager:
        assert torch.allclose(compiled[name].double(), eager[name].double(), rtol=1e-5, atol=1e-6), name
