"""Feature extraction mode: named intermediate maps or pooled vectors from a frozen backbone.

Shapes match what timm reports (``features_only`` feature_info) and what torchvision's
``create_feature_extractor`` returns for the same nodes; the extractor is frozen and stays in
eval mode after ``.train()`` (seed 004's first pitfall); unknown layers are errors with
suggestions; ``zoo features NAME --layers …`` prints the shapes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.feature_extraction import create_feature_extractor

from zoo_core.errors import ZooError
from zoo_core.features import FeatureExtractor

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
HEAD_ONLY_TIER = """
[families.tiny.tiers.t1]
rank = 1
backbone = "timm:test_resnet"
heads = { classifier = "linear" }
"""


def shapes(outputs: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in outputs.items()}


# --- timm: shapes match feature_info ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layers", "indices"),
    [
        ("resnet10t", ["layer2", "layer4"], (2, 4)),
        ("mobilenetv3_small_050", ["blocks.1", "blocks.5"], (2, 4)),
        ("test_efficientnet", [1, -1], (1, 4)),
        ("test_convnext", ["stages.1", "stages.3"], (1, 3)),
        ("test_vit", ["blocks.3", "blocks.5"], (3, 5)),
    ],
)
def test_timm_feature_maps_match_timms_features_only_model(name: str, layers: list, indices: tuple[int, ...]) -> None:
    extractor = FeatureExtractor(f"timm:{name}", layers=layers)
    reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices).eval()
    info = reference.feature_info
    assert extractor.layers == info.module_name()
    got = shapes(extractor(IMAGES))
    expected = {
        module: (2, channels, 64 // reduction, 64 // reduction)
        for module, channels, reduction in zip(info.module_name(), info.channels(), info.reduction())
    }
    assert got == expected
    with torch.no_grad():
        assert list(got.values()) == [tuple(value.shape) for value in reference(IMAGES)]


def test_the_default_layers_of_a_timm_model_are_every_feature_info_entry() -> None:
    extractor = FeatureExtractor("timm:resnet10t")
    assert extractor.layers == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert list(extractor(IMAGES)) == extractor.layers


def test_a_timm_extractor_computes_the_models_own_features() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():
        expected = model.forward_features(IMAGES)
    extractor = FeatureExtractor(model, layers=["layer4"])
    with torch.no_grad():
        torch.testing.assert_close(extractor(IMAGES)["layer4"], expected, rtol=0, atol=0)


def test_a_zoomodel_is_read_through_its_backbone() -> None:
    Path("zoo.toml").write_text(HEAD_ONLY_TIER)
    extractor = FeatureExtractor("tiny/t1", num_classes=3, layers=["layer4"])
    reference = timm.create_model("test_resnet", features_only=True, out_indices=(4,))
    assert shapes(extractor(IMAGES)) == {"layer4": (2, reference.feature_info.channels()[0], 2, 2)}


# --- torchvision: the same as create_feature_extractor ----------------------------------------------------------


def reference_maps(model: nn.Module, nodes: list[str]) -> dict[str, torch.Tensor]:
    reference = create_feature_extractor(copy.deepcopy(model).eval(), return_nodes={node: node for node in nodes})
    with torch.no_grad():
        return dict(reference(IMAGES))


@pytest.mark.parametrize(
    ("name", "nodes"),
    [("resnet18", ["layer2.1.relu_1", "layer4.1.relu_1"]), ("mobilenet_v3_small", ["features.3.add", "features.12"])],
)
def test_torchvision_maps_equal_create_feature_extractor_for_the_same_graph_nodes(name: str, nodes: list[str]) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    expected = reference_maps(model, nodes)
    extractor = FeatureExtractor(model, layers=nodes)
    with torch.no_grad():
        got = extractor(IMAGES)
    assert shapes(got) == shapes(expected)
    for node in nodes:
        torch.testing.assert_close(got[node], expected[node], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "modules"), [("resnet18", ["layer2", "layer4"]), ("mobilenet_v3_small", ["features.3", "features.12"])]
)
def test_torchvision_maps_by_module_name_match_create_feature_extractor(name: str, modules: list[str]) -> None:
    model = getattr(torchvision.models, name)()
    expected = reference_maps(model, modules)
    extractor = FeatureExtractor(f"torchvision:{name}", layers=modules)
    assert shapes(extractor(IMAGES)) == shapes(expected)


def test_the_default_layers_of_a_torchvision_resnet_are_its_stages() -> None:
    extractor = FeatureExtractor("torchvision:resnet18")
    assert extractor.layers == ["layer1", "layer2", "layer3", "layer4"]
    assert shapes(extractor(IMAGES)) == {
        "layer1": (2, 64, 16, 16),
        "layer2": (2, 128, 8, 8),
        "layer3": (2, 256, 4, 4),
        "layer4": (2, 512, 2, 2),
    }


# --- pooled vectors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "reduce"), [("avg", lambda t: t.mean(dim=(2, 3))), ("max", lambda t: t.amax(dim=(2, 3)))]
)
def test_pooled_vectors_are_the_maps_reduced_over_space(pool: str, reduce) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)
    maps = FeatureExtractor(model, layers=["layer3", "layer4"])
    pooled = FeatureExtractor(model, layers=["layer3", "layer4"], pool=pool)
    with torch.no_grad():
        full, vectors = maps(IMAGES), pooled(IMAGES)
    assert shapes(vectors) == {"layer3": (2, 256), "layer4": (2, 512)}
    for layer in ("layer3", "layer4"):
        torch.testing.assert_close(vectors[layer], reduce(full[layer]))


def test_an_unknown_pool_is_an_error() -> None:
    with pytest.raises(ZooError, match="pool must be one of none, avg, max, got 'mean'"):
        FeatureExtractor("timm:resnet10t", pool="mean")


# --- frozen and in eval mode ----------------------------------------------------------------------------------------


def test_the_extractor_is_frozen() -> None:
    model = timm.create_model("resnet10t", pretrained=False)
    extractor = FeatureExtractor(model, layers=["layer4"])
    assert not any(param.requires_grad for param in extractor.parameters())
    assert not extractor(IMAGES)["layer4"].requires_grad


def test_the_extractor_stays_in_eval_mode_after_train() -> None:
    extractor = FeatureExtractor("timm:resnet10t", layers=["layer4"])
    extractor.train()
    nn.Sequential(extractor).train()
    assert not any(module.training for module in extractor.modules())


def test_batchnorm_statistics_do_not_move_when_extracting_after_train() -> None:
    extractor = FeatureExtractor("timm:resnet10t", layers=["layer4"])
    extractor.train()
    before = {name: buffer.clone() for name, buffer in extractor.named_buffers()}
    first = extractor(IMAGES)["layer4"]
    second = extractor(IMAGES)["layer4"]
    assert any(isinstance(module, _BatchNorm) for module in extractor.modules())
    assert all(torch.equal(before[name], buffer) for name, buffer in extractor.named_buffers())
    assert torch.equal(first, second)


# --- unknown layers ------------------------------------------------------------------------------------------------


def test_an_unknown_timm_layer_is_an_error_that_suggests_and_lists_layers() -> None:
    with pytest.raises(ZooError) as error:
        FeatureExtractor("timm:resnet10t", layers=["layer5"])
    assert (
        str(error.value)
        == "unknown layer 'layer5' - did you mean 'layer4'? (layers: act1, layer1, layer2, layer3, layer4)"
    )


def test_an_unknown_torchvision_layer_is_an_error_that_suggests_the_closest() -> None:
    with pytest.raises(ZooError, match=r"unknown layer 'layer2\.1\.relu_9' - did you mean 'layer2\.1\.relu_1'\?"):
        FeatureExtractor("torchvision:resnet18", layers=["layer2.1.relu_9"])


def test_a_layer_index_out_of_range_is_an_error() -> None:
    with pytest.raises(ZooError, match="layer index 5 is out of range; layers: act1, layer1, layer2, layer3, layer4"):
        FeatureExtractor("timm:resnet10t", layers=[5])


# --- the command line ----------------------------------------------------------------------------------------------


def test_zoo_features_prints_a_table_of_shapes(zoo) -> None:
    result = zoo("features", "timm:resnet10t", "--layers", "layer2", "layer4", "--size", "64")
    assert result.code == 0, result
    rows = [line.split() for line in result.out.splitlines() if line.strip()]
    assert rows == [["LAYER", "SHAPE"], ["layer2", "1x128x8x8"], ["layer4", "1x512x2x2"]]


def test_zoo_features_json_gives_shapes_by_layer(zoo) -> None:
    result = zoo("features", "timm:resnet10t", "--layers", "0", "-1", "--size", "64", "--json")
    assert result.code == 0, result
    assert json.loads(result.out) == {"act1": [1, 64, 32, 32], "layer4": [1, 512, 2, 2]}


def test_zoo_features_pooled_json_gives_vector_widths(zoo) -> None:
    result = zoo("features", "timm:test_convnext", "--pool", "avg", "--size", "64", "--json")
    assert result.code == 0, result
    info = timm.create_model("test_convnext", features_only=True).feature_info
    assert json.loads(result.out) == {name: [1, width] for name, width in zip(info.module_name(), info.channels())}


def test_zoo_features_of_a_torchvision_model_by_stage_name(zoo) -> None:
    result = zoo("features", "torchvision:resnet18", "--layers", "layer2", "layer4", "--size", "64", "--json")
    assert result.code == 0, result
    assert json.loads(result.out) == {"layer2": [1, 128, 8, 8], "layer4": [1, 512, 2, 2]}


def test_zoo_features_with_an_unknown_layer_is_a_one_line_error(zoo) -> None:
    result = zoo("features", "timm:resnet10t", "--layers", "layer9", "--size", "64")
    assert result.code == 2
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("zoo: error: unknown layer 'layer9' - did you mean 'layer4'?")
    assert list(Path.cwd().iterdir()) == []


def test_zoo_features_of_an_unknown_model_is_a_one_line_error(zoo) -> None:
    result = zoo("features", "timm:resnet10x", "--size", "64")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error:") and "resnet10x" in lines[0]
