"""Backbone sources: timm, torchvision, hf-hub, file and tiers each build a model by name.

Every source is exercised three ways: without pretrained weights, with pretrained weights
read from a real local cache (written with the libraries' own saving code, never downloaded)
and with a new ``num_classes``. Saved weights are scrambled first, so "equal" can never come
from two models sharing an initialisation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import assert_one_error as one_error_line
from conftest import assert_same_tensors, scrambled, write_hf_snapshot

from zoo_core.checkpoint import read_checkpoint, save_safetensors
from zoo_core.errors import CheckpointError
from zoo_core.models import create_model
from zoo_core.registry import default_registry
from zoo_core.zoomodel import ZooModel

REV_A = "a" * 40
REV_B = "b" * 40
TV_RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name


# --- helpers -------------------------------------------------------------------------------------






def without(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.startswith(prefix)}




@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may be downloaded: every pretrained load below must come from a local cache."""
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def timm_hf_cache() -> dict[str, torch.Tensor]:
    """``timm/resnet10t.c3_in1k`` in the HF cache; returns the saved state dict."""
    model = scrambled(timm.create_model("resnet10t", pretrained=False), seed=1)
    write_hf_snapshot("timm/resnet10t.c3_in1k", model, REV_A)
    return model.state_dict()


@pytest.fixture
def torchvision_cache() -> dict[str, torch.Tensor]:
    """resnet18 weights where torchvision keeps ``IMAGENET1K_V1``; returns the saved state dict."""
    model = scrambled(torchvision.models.resnet18(weights=None), seed=2)
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / TV_RESNET18_FILE)
    return model.state_dict()


# --- timm ------------------------------------------------------------------------------------------


def test_timm_builds_an_untrained_architecture_without_any_cache(offline: None) -> None:
    model = create_model("timm:resnet10t", pretrained=False)

    assert type(model).__name__ == "ResNet"
    assert model.fc.out_features == 1000
    assert model.zoo_spec.source == "timm"


def test_timm_untrained_model_takes_a_new_num_classes(offline: None) -> None:
    model = create_model("timm:resnet10t", pretrained=False, num_classes=3)

    assert model.fc.out_features == 3
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_timm_pretrained_weights_load_from_the_hf_cache_offline(timm_hf_cache: dict, offline: None) -> None:
    model = create_model("timm:resnet10t.c3_in1k", pretrained=True)

    assert_same_tensors(model.state_dict(), timm_hf_cache)


def test_timm_bare_architecture_uses_its_default_pretrained_tag(timm_hf_cache: dict, offline: None) -> None:
    model = create_model("timm:resnet10t", pretrained=True)

    assert model.zoo_spec.name == "timm:resnet10t.c3_in1k"
    assert_same_tensors(model.state_dict(), timm_hf_cache)


def test_timm_pretrained_with_new_num_classes_keeps_backbone_and_replaces_classifier(
    timm_hf_cache: dict, offline: None
) -> None:
    model = create_model("timm:resnet10t.c3_in1k", pretrained=True, num_classes=3)
    state = model.state_dict()

    assert_same_tensors(without(state, "fc."), without(timm_hf_cache, "fc."))
    assert state["fc.weight"].shape == (3, 512)
    assert not torch.equal(state["fc.weight"], timm_hf_cache["fc.weight"][:3])


# --- torchvision -----------------------------------------------------------------------------------


def test_torchvision_builds_an_untrained_builder_with_new_num_classes(offline: None) -> None:
    model = create_model("torchvision:resnet18", pretrained=False, num_classes=7)

    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 7


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:resnet18.IMAGENET1K_V1"])
def test_torchvision_pretrained_weights_load_from_torch_home(name: str, torchvision_cache: dict, offline: None) -> None:
    model = create_model(name, pretrained=True)

    assert model.zoo_spec.name == "torchvision:resnet18.IMAGENET1K_V1"
    assert_same_tensors(model.state_dict(), torchvision_cache)


def test_torchvision_pretrained_with_new_num_classes_replaces_the_head(torchvision_cache: dict, offline: None) -> None:
    model = create_model("torchvision:resnet18", pretrained=True, num_classes=4)
    state = model.state_dict()

    assert_same_tensors(without(state, "fc."), without(torchvision_cache, "fc."))
    assert model.fc.out_features == 4
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


# --- hf-hub ----------------------------------------------------------------------------------------


@pytest.fixture
def hub_repo() -> dict[str, torch.Tensor]:
    """``acme/tiny-net``: a 7-class resnet10t saved with timm's hub format at REV_A (main)."""
    model = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=7), seed=3)
    write_hf_snapshot("acme/tiny-net", model, REV_A)
    return model.state_dict()


def test_hf_hub_architecture_and_num_classes_come_from_config_json(hub_repo: dict, offline: None) -> None:
    resolved = default_registry().resolve("hf-hub:acme/tiny-net")

    assert resolved.architecture == "resnet10t"
    assert resolved.num_classes == 7
    assert resolved.revision == REV_A


def test_hf_hub_pretrained_weights_load_from_the_cache_offline(hub_repo: dict, offline: None) -> None:
    model = create_model("hf-hub:acme/tiny-net", pretrained=True)

    assert model.fc.out_features == 7
    assert_same_tensors(model.state_dict(), hub_repo)


def test_hf_hub_untrained_model_follows_config_json(hub_repo: dict, offline: None) -> None:
    model = create_model("hf-hub:acme/tiny-net", pretrained=False)

    assert type(model).__name__ == "ResNet"
    assert model.fc.out_features == 7
    assert not torch.equal(model.state_dict()["conv1.0.weight"], hub_repo["conv1.0.weight"])


def test_hf_hub_pretrained_with_new_num_classes_replaces_the_classifier(hub_repo: dict, offline: None) -> None:
    model = create_model("hf-hub:acme/tiny-net", pretrained=True, num_classes=2)
    state = model.state_dict()

    assert model.fc.out_features == 2
    assert_same_tensors(without(state, "fc."), without(hub_repo, "fc."))


def test_hf_hub_revision_pin_picks_its_snapshot_over_main(offline: None) -> None:
    old = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=7), seed=4)
    new = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=7), seed=5)
    write_hf_snapshot("acme/tiny-net", old, REV_A, main=False)
    write_hf_snapshot("acme/tiny-net", new, REV_B)  # refs/main -> REV_B
    old, new = old.state_dict(), new.state_dict()

    pinned = create_model(f"hf-hub:acme/tiny-net@{REV_A}", pretrained=True)
    latest = create_model("hf-hub:acme/tiny-net", pretrained=True)

    assert pinned.zoo_spec.revision == REV_A
    assert latest.zoo_spec.revision == REV_B
    assert_same_tensors(pinned.state_dict(), old)
    assert_same_tensors(latest.state_dict(), new)


def test_hf_hub_unknown_revision_offline_names_the_pull_command(hub_repo: dict, offline: None, zoo) -> None:
    missing = f"hf-hub:acme/tiny-net@{'c' * 40}"

    line = one_error_line(zoo("info", missing))

    assert f"zoo pull {missing}`" in line  # pulling main would not bring this revision


# --- file ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_source_rebuilds_the_model_a_transfer_wrote(suffix: str, tiny_checkpoint, zoo, offline: None) -> None:
    source = tiny_checkpoint(num_classes=5)
    out = Path(f"carried{suffix}")
    result = zoo("transfer", source, "--to", "timm:resnet10t", "--num-classes", "5", "-o", out)
    assert result.code == 0, result
    saved = read_checkpoint(out).state_dict

    model = create_model(f"file:{out}", pretrained=True)

    assert model.fc.out_features == 5
    assert_same_tensors(model.state_dict(), saved)


def test_file_source_reads_a_checkpoint_dict_with_provenance(tmp_path: Path, offline: None) -> None:
    trained = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=5), seed=6).state_dict()
    path = tmp_path / "trained.pt"
    torch.save({"model_state_dict": trained, "provenance": {"model": "timm:resnet10t", "num_classes": 5}}, path)

    model = create_model(f"file:{path}", pretrained=True)

    assert model.fc.out_features == 5
    assert_same_tensors(model.state_dict(), trained)


def test_file_source_without_pretrained_builds_the_named_architecture_untrained(tmp_path: Path, offline: None) -> None:
    trained = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=5), seed=6).state_dict()
    path = tmp_path / "trained.pt"
    torch.save({"model_state_dict": trained, "provenance": {"model": "timm:resnet10t", "num_classes": 5}}, path)

    model = create_model(f"file:{path}", pretrained=False)

    assert model.fc.out_features == 5
    assert not torch.equal(model.state_dict()["conv1.0.weight"], trained["conv1.0.weight"])


def test_file_source_with_new_num_classes_keeps_backbone_and_replaces_head(tmp_path: Path, offline: None) -> None:
    trained = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=5), seed=6).state_dict()
    path = tmp_path / "trained.pt"
    torch.save({"model_state_dict": trained, "provenance": {"model": "timm:resnet10t", "num_classes": 5}}, path)

    model = create_model(f"file:{path}", pretrained=True, num_classes=3)

    assert model.fc.out_features == 3
    assert_same_tensors(without(model.state_dict(), "fc."), without(trained, "fc."))


def test_file_source_safetensors_export_carries_its_model_in_metadata(tmp_path: Path, offline: None) -> None:
    trained = scrambled(timm.create_model("resnet10t", pretrained=False, num_classes=5), seed=7).state_dict()
    path = save_safetensors(trained, tmp_path / "export.safetensors", {"model": "timm:resnet10t", "num_classes": 5})

    model = create_model(f"file:{path}", pretrained=True)

    assert_same_tensors(model.state_dict(), trained)


def test_file_without_provenance_is_an_error_that_says_how_to_use_it(zoo, offline: None) -> None:
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), "plain.pt")
    before = sorted(os.listdir("."))

    line = one_error_line(zoo("info", "file:plain.pt"))

    assert "plain.pt" in line and "provenance" in line
    assert "zoo transfer plain.pt --to NAME" in line
    assert sorted(os.listdir(".")) == before


def test_file_without_provenance_raises_checkpoint_error_from_python(offline: None) -> None:
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), "plain.pt")

    with pytest.raises(CheckpointError, match="plain.pt: has no provenance"):
        create_model("file:plain.pt", pretrained=True)


def test_missing_file_is_a_one_line_error(zoo, offline: None) -> None:
    line = one_error_line(zoo("info", "file:absent.pt"))

    assert "absent.pt" in line


# --- tiers -----------------------------------------------------------------------------------------


def test_maxsight_t2_builds_a_zoomodel_with_backbone_neck_and_heads(offline: None) -> None:
    model = create_model("maxsight/t2", num_classes=4)

    assert isinstance(model, ZooModel)
    assert [name for name, _ in model.named_children()] == ["backbone", "neck", "heads"]
    assert list(model.heads) == ["classifier", "distance"]
    assert all(key.split(".")[0] in {"backbone", "neck", "heads"} for key in model.state_dict())
    model.eval()
    outputs = model(torch.randn(2, 3, 32, 32))
    assert outputs["classifier"].shape == (2, 4)
    assert outputs["distance"].shape == (2, 1)


def test_catalog_tier_without_neck_builds_backbone_and_heads(offline: None) -> None:
    model = create_model("lite/t1", num_classes=3)

    assert isinstance(model, ZooModel)
    assert model.neck is None
    assert {name for name, _ in model.named_children()} == {"backbone", "heads"}
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
