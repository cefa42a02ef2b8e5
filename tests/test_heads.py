"""Heads: factories registered by name, replacing a classifier, class-aware init, stripping it.

``linear`` and ``mlp`` come from Zoo's own plugin through ``zoo_register_heads`` (any plugin can
add more); replacing the head for a new ``num_classes`` works on timm, torchvision and ZooModel
models and leaves the backbone untouched; a new head can take the rows of the classes it shares
with the old one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import TINY_TIER
from torch import nn

import zoo_core
from zoo_core.errors import PluginError, RecipeError, UnknownNameError, ZooError
from zoo_core.groups import layer_groups
from zoo_core.heads import LinearHead, MlpHead, build_head, find_classifier, replace_head, strip_classifier

TINY_TIERS = TINY_TIER + """
[families.tiny.tiers.t2]
rank = 2
backbone = "timm:test_resnet"
heads = { classifier = { kind = "mlp", hidden = [8], dropout = 0.0 } }
"""
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiers() -> None:
    Path("zoo.toml").write_text(TINY_TIERS)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def unchanged_except(before: dict[str, torch.Tensor], model: nn.Module, prefix: str) -> bool:
    after = model.state_dict()
    kept = [name for name in before if not name.startswith(prefix)]
    return bool(kept) and all(torch.equal(before[name], after[name]) for name in kept)


def layer_types(module: nn.Module) -> list[str]:
    return [type(child).__name__ for child in module]


# --- factories by name ---------------------------------------------------------------------------------


def test_linear_and_mlp_are_head_factories_registered_by_zoos_own_plugin(registry) -> None:
    assert {"linear", "mlp"} <= set(registry.heads)
    assert registry.heads["linear"].plugin == registry.heads["mlp"].plugin == "core"


def test_the_linear_head_is_optional_dropout_then_one_linear_layer() -> None:
    head = build_head("linear", 16, 3, dropout=0.25)
    assert isinstance(head.drop, nn.Dropout) and head.drop.p == 0.25
    assert (head.fc.in_features, head.fc.out_features) == (16, 3)
    assert head(torch.randn(2, 16)).shape == (2, 3)


def test_the_mlp_head_has_hidden_layers_with_activation_and_dropout() -> None:
    head = build_head("mlp", 16, 3, hidden=[32, 8], dropout=0.1, activation="gelu")
    assert layer_types(head.body) == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout"]
    assert [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)] == [
        (16, 32),
        (32, 8),
        (8, 3),
    ]
    assert all(m.p == 0.1 for m in head.body if isinstance(m, nn.Dropout))
    assert head(torch.randn(2, 16)).shape == (2, 3)


def test_the_mlp_head_takes_one_hidden_size_and_leaves_out_dropout_at_zero() -> None:
    head = build_head("mlp", 16, 3, hidden=24, dropout=0.0, activation="silu")
    assert layer_types(head.body) == ["Linear", "SiLU"]
    assert head.fc.in_features == 24


def test_an_unknown_mlp_activation_is_a_clear_error() -> None:
    with pytest.raises(RecipeError) as error:
        build_head("mlp", 16, 3, activation="rleu")
    assert (
        str(error.value)
        == "mlp head: unknown activation 'rleu' - did you mean 'relu'? (choose from relu, gelu, silu, tanh)"
    )


def test_an_unknown_head_kind_is_an_error_that_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown head 'mpl' - did you mean 'mlp'\? \(heads: fasterrcnn, fcos, linear, mlp, multigrid, retinanet\)"):
        build_head("mpl", 16, 3)


class CosineHead(nn.Module):
    """A throwaway plugin's head: scaled cosine similarity to class prototypes."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.scale = scale
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=1).T


class CosinePlugin:
    @zoo_core.hookimpl
    def zoo_register_heads(self, register):
        register("cosine", CosineHead, description="scaled cosine classifier")


def test_a_plugin_registers_a_head_factory_by_name(make_registry) -> None:
    registry = make_registry(CosinePlugin())
    assert registry.heads["cosine"].plugin == "throwaway-0"
    head = build_head("cosine", 16, 3, registry=registry, scale=5.0)
    assert isinstance(head, CosineHead) and head.scale == 5.0
    assert "cosine" not in make_registry().heads


def test_a_plugin_head_can_replace_a_models_classifier(make_registry) -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    head = replace_head(model, 4, kind="cosine", registry=make_registry(CosinePlugin()))
    assert isinstance(head, CosineHead) and model.get_classifier() is head
    assert model(IMAGES).shape == (2, 4)


def test_a_plugin_registering_linear_again_is_an_error_naming_both_plugins(make_registry) -> None:
    class Clash:
        name = "clash"

        @zoo_core.hookimpl
        def zoo_register_heads(self, register):
            register("linear", CosineHead)

    with pytest.raises(PluginError, match="head 'linear' is registered by both plugin '.+' and plugin '.+'"):
        _ = make_registry(Clash()).heads


# --- replacing the head for a new num_classes -------------------------------------------------------------


def test_replacing_a_timm_head_changes_the_output_and_keeps_the_backbone() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    before = snapshot(model)
    replace_head(model, 7)
    assert model(IMAGES).shape == (2, 7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    assert unchanged_except(before, model, "fc.")


@pytest.mark.parametrize(("name", "classifier"), [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_replacing_a_torchvision_head_changes_the_output_and_keeps_the_backbone(name: str, classifier: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    before = snapshot(model)
    head = replace_head(model, 3)
    assert model.get_submodule(classifier) is head
    assert model(IMAGES).shape == (2, 3)
    assert unchanged_except(before, model, classifier + ".")


@pytest.mark.parametrize(("name", "classifier"), [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_replacing_a_torchvision_head_keeps_torchvisions_state_dict_layout(name: str, classifier: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=10)
    replace_head(model, 3)
    assert find_classifier(model)[0] == classifier
    fresh = getattr(torchvision.models, name)(num_classes=3)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_replacing_a_zoomodel_head_replaces_its_primary_head_only(tiers: None) -> None:
    model = zoo_core.create_model("tiny/t1", num_classes=5).eval()
    before = snapshot(model)
    head = replace_head(model, 7)
    assert isinstance(head, LinearHead) and model.heads["classifier"] is head
    outputs = model(IMAGES)
    assert outputs["classifier"].shape == (2, 7) and outputs["distance"].shape == (2, 1)
    assert unchanged_except(before, model, "heads.classifier.")


def test_a_replaced_head_with_mlp_kind_is_the_new_head_group() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    head = replace_head(model, 4, "mlp", hidden=[16], dropout=0.0)
    assert isinstance(head, MlpHead) and model.get_classifier() is head
    assert model(IMAGES).shape == (2, 4)
    groups = layer_groups(model)
    assert groups[-1].name == "head"
    assert set(groups[-1].params) == {name for name, _ in model.named_parameters() if name.startswith("fc.")}


# --- a new head initialised from the old one by class name ---------------------------------------------------


def test_a_new_head_takes_the_rows_of_the_classes_it_shares_with_the_old_one() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    old = {name: tensor.clone() for name, tensor in model.fc.state_dict().items()}
    replace_head(model, 4, old_classes=["cat", "dog", "bird"], new_classes=["dog", "fish", "cat", "owl"])
    new = model.fc.state_dict()
    for attribute in ("weight", "bias"):
        assert torch.equal(new[attribute][0], old[attribute][1])  # dog
        assert torch.equal(new[attribute][2], old[attribute][0])  # cat
        for row in (1, 3):  # fish, owl: fresh
            assert not any(torch.equal(new[attribute][row], old[attribute][k]) for k in range(3))


def test_class_aware_init_of_an_mlp_head_copies_hidden_layers_and_shared_rows(tiers: None) -> None:
    model = zoo_core.create_model("tiny/t2", num_classes=2)
    old = {name: tensor.clone() for name, tensor in model.heads["classifier"].state_dict().items()}
    head = replace_head(model, 3, "mlp", hidden=[8], dropout=0.0, old_classes=["a", "b"], new_classes=["b", "c", "a"])
    new = head.state_dict()
    assert torch.equal(new["body.0.weight"], old["body.0.weight"])
    assert torch.equal(new["fc.weight"][0], old["fc.weight"][1]) and torch.equal(
        new["fc.weight"][2], old["fc.weight"][0]
    )
    assert not torch.equal(new["fc.weight"][1], old["fc.weight"][0]) and not torch.equal(
        new["fc.weight"][1], old["fc.weight"][1]
    )
    assert model(IMAGES).shape == (2, 3)


# --- stripping the classifier ---------------------------------------------------------------------------------


def test_strip_classifier_turns_a_timm_model_into_a_pooled_feature_extractor() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    width = strip_classifier(model)
    assert width == model.num_features
    assert model(IMAGES).shape == (2, width)
    assert not [name for name, _ in model.named_parameters() if name.startswith("fc.")]


@pytest.mark.parametrize(("name", "width"), [("resnet18", 512), ("mobilenet_v3_small", 1024)])
def test_strip_classifier_turns_a_torchvision_model_into_a_pooled_feature_extractor(name: str, width: int) -> None:
    model = getattr(torchvision.models, name)().eval()
    assert strip_classifier(model) == width
    assert model(IMAGES).shape == (2, width)


def test_a_stripped_timm_model_has_no_classifier_to_replace() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    strip_classifier(model)
    with pytest.raises(ZooError, match=r"has no classifier \(it was removed\); give it a head first"):
        replace_head(model, 3)
