"""Pulling a backbone by name and building a tier on it, as the CLI does it.

A pretrained backbone is carried into a tier's ``backbone.*``; ``zoo finetune --model TIER``
starts from the tier's backbone's pretrained weights; a plan between two tiers needs no weights;
``--in-chans`` builds a model for other input channels; a backbone-only export says so. The
hub cache stands in for a download: it is written by timm's own ``save_for_hf``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import assert_one_error, scrambled, write_hf_snapshot, write_image_folder
from safetensors.torch import load_file

BACKBONE = "timm:resnet14t.c3_in1k"  # maxsight/t2's backbone, resolved to its default tag


@pytest.fixture
def hub_backbone() -> dict[str, torch.Tensor]:
    """resnet14t's pretrained weights in the hub cache, scrambled so no initialisation equals them."""
    model = scrambled(timm.create_model("resnet14t", pretrained=False), seed=7)
    write_hf_snapshot("timm/resnet14t.c3_in1k", model)
    return model.state_dict()


def test_a_pretrained_backbone_is_carried_into_a_tier(hub_backbone, tmp_path: Path, zoo) -> None:
    out = tmp_path / "t2.safetensors"

    result = zoo("transfer", BACKBONE, "--to", "maxsight/t2", "--num-classes", "3", "--require", "backbone=1.0", "-o", out)

    assert result.code == 0, result
    written = load_file(str(out))
    carried = {key.removeprefix("backbone."): value for key, value in written.items() if key.startswith("backbone.")}
    expected = {key: value for key, value in hub_backbone.items() if not key.startswith("fc.")}
    assert carried.keys() == expected.keys()
    assert all(torch.equal(carried[key], expected[key]) for key in expected)


def test_finetuning_a_tier_starts_from_its_backbones_pretrained_weights(hub_backbone, tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"

    result = zoo("finetune", "--recipe", "linear-probe", "--model", "maxsight/t2", "--data", data, "--image-size", "32",
                 "--set", "stages.0.epochs=1", "--run-dir", run)

    assert result.code == 0, result
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["model"] == "maxsight/t2" and provenance["base_model"] == BACKBONE
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state_dict"]
    # linear-probe trains the heads only: the backbone (BatchNorm statistics included) is the hub's
    assert all(torch.equal(last[f"backbone.{key}"], value) for key, value in hub_backbone.items() if not key.startswith("fc."))


def test_a_plan_between_two_tiers_needs_no_weights(zoo) -> None:
    result = zoo("transfer", "maxsight/t2", "--to", "maxsight/t5", "--num-classes", "3", "--plan")

    assert result.code == 0, result
    rows = {line.split()[0]: line.split()[1:4] for line in result.out.splitlines()[3:12] if line.strip()}
    assert rows["temporal"] == ["neck", "0.0%", "0/4"] and rows["heads.classifier"] == ["head", "100.0%", "2/2"]


def test_writing_a_plan_from_an_untrained_tier_is_one_line_in_cli_words(tmp_path: Path, zoo) -> None:
    result = zoo("transfer", "maxsight/t2", "--to", "maxsight/t5", "--num-classes", "3", "-o", tmp_path / "t5.pt")

    line = assert_one_error(result, "maxsight/t2 has shapes but no weights to carry")
    assert "pretrained=False" not in line
    assert not (tmp_path / "t5.pt").exists()


def test_a_name_without_weights_asks_for_no_pretrained_in_cli_words(tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data")

    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_vit4", "--data", data, "--run-dir", tmp_path / "run")

    assert_one_error(result, "timm:test_vit4 has no pretrained weights", "--no-pretrained")


# --- input channels ------------------------------------------------------------------------------------------


def test_info_builds_for_other_input_channels(zoo) -> None:
    three = json.loads(zoo("info", "timm:test_resnet", "--json").out)
    one = zoo("info", "timm:test_resnet", "--in-chans", "1", "--json")

    assert one.code == 0, one
    assert json.loads(one.out)["parameters"] < three["parameters"]


def test_finetune_trains_a_model_built_for_one_channel(tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"

    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--in-chans", "1",
                 "--data", data, "--image-size", "32", "--set", "stages.0.epochs=1", "--run-dir", run)

    assert result.code == 0, result
    assert json.loads((run / "provenance.json").read_text())["input"]["channels"] == 1
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state_dict"]
    assert last["conv1.0.weight"].shape[1] == 1


def test_transfer_adapts_the_first_convolution_to_other_input_channels(tiny_checkpoint, tmp_path: Path, zoo) -> None:
    source = tiny_checkpoint("resnet10t", num_classes=3)
    out = tmp_path / "gray.pt"

    result = zoo("transfer", source, "--to", "timm:resnet10t", "--num-classes", "3", "--in-chans", "1", "--strict", "-o", out)

    assert result.code == 0, result
    assert "input channels 3->1" in result.out
    assert torch.load(out, weights_only=True)["model_state_dict"]["conv1.0.weight"].shape[1] == 1


def test_torchvision_models_refuse_other_input_channels_in_one_line(zoo) -> None:
    assert_one_error(zoo("info", "torchvision:resnet18", "--in-chans", "1"), "torchvision builds its models for 3 input channels")


# --- a backbone-only export ----------------------------------------------------------------------------------


def test_info_on_a_backbone_only_export_says_it_has_no_head(tiny_checkpoint, tmp_path: Path, zoo) -> None:
    source = tiny_checkpoint("resnet10t", num_classes=3)
    start = tmp_path / "start.pt"
    assert zoo("transfer", source, "--to", "timm:resnet10t", "--classes", "a,b,c", "-o", start).code == 0
    assert zoo("export", start, "--backbone-only", "-o", tmp_path / "backbone.safetensors").code == 0

    result = zoo("info", f"file:{tmp_path / 'backbone.safetensors'}")

    assert result.code == 0, result
    assert "backbone only: no head, no classes" in result.out and "3 classes" not in result.out
