"""What a model family knows about itself comes from plugins: its classifier and how to reset it,
its input config, and the dropout it applies without a module (``zoo_classifier``,
``zoo_reset_classifier``, ``zoo_input_config``, ``zoo_head_dropout``).

Each hook is tested twice: the built-in answer for timm models (moved out of core into the timm
plugin) and a throwaway plugin that overrides it for a model core knows nothing about.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

import zoo_core
from zoo_core.anatomy import find_classifier, head_dropout, input_config
from zoo_core.engine.cache import plan_cache
from zoo_core.heads import replace_head, strip_classifier
from zoo_core.specs import InputConfig


class TwoOutputs(nn.Module):
    """Scores come from ``score``; ``aux`` (registered last) is an auxiliary regression head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.score = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.body(x))


class KnowsTwoOutputs:
    """A family plugin for TwoOutputs."""

    def __init__(self) -> None:
        self.resets: list[int] = []

    @zoo_core.hookimpl
    def zoo_classifier(self, model):
        return ("score", model.score) if isinstance(model, TwoOutputs) else None

    @zoo_core.hookimpl
    def zoo_reset_classifier(self, model, num_classes):
        if not isinstance(model, TwoOutputs):
            return None
        self.resets.append(num_classes)
        model.score = nn.Linear(8, num_classes) if num_classes else nn.Identity()
        return model.score

    @zoo_core.hookimpl
    def zoo_input_config(self, model):
        return InputConfig(size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) if isinstance(model, TwoOutputs) else None

    @zoo_core.hookimpl
    def zoo_head_dropout(self, model):
        return 0.5 if isinstance(model, TwoOutputs) else None


def test_without_a_plugin_the_last_linear_layer_is_the_classifier(make_registry) -> None:
    registry = make_registry()

    assert find_classifier(TwoOutputs(), registry.plugins.hook)[0] == "aux"


def test_a_family_plugin_names_its_models_classifier(make_registry) -> None:
    registry = make_registry(KnowsTwoOutputs())

    assert find_classifier(TwoOutputs(), registry.plugins.hook)[0] == "score"


def test_replacing_a_head_resets_the_classifier_the_family_way(make_registry) -> None:
    plugin = KnowsTwoOutputs()
    model = TwoOutputs()

    head = replace_head(model, 7, registry=make_registry(plugin))

    assert plugin.resets == [7] and head is model.score and model.score.out_features == 7
    assert model.aux.out_features == 1  # the auxiliary head is left alone


def test_timm_models_are_reset_by_timms_own_reset_classifier(registry) -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    head = replace_head(model, 3, registry=registry)

    assert model.num_classes == 3 and model.get_classifier() is head
    assert find_classifier(model, registry.plugins.hook) == ("fc", head)


def test_stripping_a_timm_classifier_keeps_its_pre_logits_width(registry) -> None:
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5)
    width = model.get_classifier().in_features

    assert strip_classifier(model, registry) == width
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, width)


def test_a_family_plugin_gives_its_models_input_config(make_registry) -> None:
    config = input_config(TwoOutputs(), make_registry(KnowsTwoOutputs()).plugins.hook)

    assert (config.size, config.mean, config.std) == (96, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_timm_models_give_their_pretrained_config(registry) -> None:
    model = timm.create_model("resnet10t", pretrained=False, in_chans=1)

    config = input_config(model, registry.plugins.hook, image_size=48)

    assert config.size == 48 and config.channels == 1 and len(config.mean) == 1
    assert config.crop_pct == model.pretrained_cfg["crop_pct"]


def test_without_a_plugin_inputs_are_imagenet_at_224_with_the_first_convs_channels(make_registry) -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.LazyLinear(3))

    config = input_config(model, make_registry().plugins.hook)

    assert (config.size, config.channels) == (224, 2)


def test_dropout_a_model_applies_without_a_module_turns_the_feature_cache_off(make_registry) -> None:
    registry = make_registry(KnowsTwoOutputs())
    model = TwoOutputs()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("score."))

    assert head_dropout(model, registry.plugins.hook) == 0.5
    split, reason = plan_cache(model, True, registry.plugins.hook)
    assert split is None and "dropout (0.5)" in reason


def test_timm_drop_rate_is_known_to_the_feature_cache(registry) -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3, drop_rate=0.3)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("fc."))
    model.eval()

    split, reason = plan_cache(model, True, registry.plugins.hook)

    assert split is None and reason == "the model applies dropout (0.3) before its classifier"
    assert plan_cache(timm.create_model("resnet10t", pretrained=False, num_classes=3).eval(), True, registry.plugins.hook)[1] != reason
