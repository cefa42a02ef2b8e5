"""LayerGroups: one ordered, exhaustive, non-overlapping partition of a model's parameters.

Groups run from input to output (stem → stages → neck → heads) with roles backbone, neck and
head; a parameter that matches no group, or two, is a GroupError naming it; a plugin's
``zoo_layer_groups`` overrides the built-in groups; ``zoo info NAME --groups`` prints them.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

import zoo_core
from zoo_core.errors import GroupError
from zoo_core.groups import LayerGroups, layer_groups
from zoo_core.specs import Role

TIMM_ARCHS = [
    "resnet10t",
    "resnet50",
    "mobilenetv3_small_050",
    "efficientnet_b0",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "regnetx_002",
    "test_vit",
    "test_convnext",
    "test_efficientnet",
]
TORCHVISION_ARCHS = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "vit_b_16",
    "swin_t",
    "densenet121",
    "vgg11",
]
# the parameter that produces the class scores, per torchvision family
TORCHVISION_CLASSIFIER = {
    "resnet18": "fc.weight",
    "mobilenet_v2": "classifier.1.weight",
    "mobilenet_v3_small": "classifier.3.weight",
    "efficientnet_b0": "classifier.1.weight",
    "convnext_tiny": "classifier.2.weight",
    "regnet_y_400mf": "fc.weight",
    "vit_b_16": "heads.head.weight",
    "swin_t": "head.weight",
    "densenet121": "classifier.weight",
    "vgg11": "classifier.6.weight",
}
NEEDS_REAL_TENSORS = {"regnet_y_400mf"}  # its constructor computes widths with real tensors
ROLE_ORDER = {Role.BACKBONE: 0, Role.NECK: 1, Role.HEAD: 2}


def build_timm(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def build_torchvision(name: str) -> nn.Module:
    if name in NEEDS_REAL_TENSORS:
        return getattr(torchvision.models, name)()
    with torch.device("meta"):
        return getattr(torchvision.models, name)()


def build(source: str, name: str) -> nn.Module:
    return build_timm(name) if source == "timm" else build_torchvision(name)


ALL_ARCHS = [("timm", name) for name in TIMM_ARCHS] + [("torchvision", name) for name in TORCHVISION_ARCHS]
ARCH_IDS = [f"{source}:{name}" for source, name in ALL_ARCHS]


def classifier_param(source: str, name: str, model: nn.Module) -> str:
    if source == "torchvision":
        return TORCHVISION_CLASSIFIER[name]
    classifier = model.get_classifier()
    classifier = classifier[0] if isinstance(classifier, tuple) else classifier
    return next(f"{module_name}.weight" for module_name, module in model.named_modules() if module is classifier)


# --- exhaustive, non-overlapping, ordered -------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
@pytest.mark.parametrize(("source", "name"), ALL_ARCHS, ids=ARCH_IDS)
def test_every_parameter_is_in_exactly_one_group(source: str, name: str, granularity: str) -> None:
    model = build(source, name)
    groups = layer_groups(model, granularity=granularity)
    assigned = [param for group in groups for param in group.params]
    assert len(assigned) == len(set(assigned)), "a parameter sits in two groups"
    assert sorted(assigned) == sorted(name for name, _ in model.named_parameters())
    params = dict(model.named_parameters())
    for group in groups:
        assert group.numel == sum(params[p].numel() for p in group.params)
    assert len(set(groups.names())) == len(groups)


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
@pytest.mark.parametrize(("source", "name"), ALL_ARCHS, ids=ARCH_IDS)
def test_groups_run_from_input_to_output_with_the_head_last(source: str, name: str, granularity: str) -> None:
    model = build(source, name)
    groups = layer_groups(model, granularity=granularity)
    order = {param: index for index, (param, _) in enumerate(model.named_parameters())}
    first_param = next(iter(order))
    assert first_param in groups[0].params, f"{first_param} (the input side) is not in the first group"
    starts = [min(order[p] for p in group.params) for group in groups]
    assert starts == sorted(starts), f"groups out of model order: {groups.names()}"
    ranks = [ROLE_ORDER[group.role] for group in groups]
    assert ranks == sorted(ranks), f"roles out of order backbone -> neck -> head: {groups!r}"
    assert groups[-1].role is Role.HEAD
    assert classifier_param(source, name, model) in groups[-1].params


@pytest.mark.parametrize(("source", "name"), ALL_ARCHS, ids=ARCH_IDS)
def test_a_plain_classifier_has_exactly_one_head_group(source: str, name: str) -> None:
    model = build(source, name)
    for granularity in ("coarse", "fine"):
        heads = [group.name for group in layer_groups(model, granularity=granularity) if group.role is Role.HEAD]
        assert heads == ["head"], f"{granularity}: head groups {heads}"


@pytest.mark.parametrize(
    ("source", "name", "stage", "blocks"),
    [
        ("timm", "resnet50", "layer1", 3),
        ("timm", "regnetx_002", "s3", 4),
        ("timm", "efficientnet_b0", "blocks.1", 2),
        ("timm", "convnext_atto", "stages.1", 2),
        ("torchvision", "resnet18", "layer2", 2),
        ("torchvision", "convnext_tiny", "features.1", 3),
        ("torchvision", "efficientnet_b0", "features.2", 2),
        ("torchvision", "regnet_y_400mf", "block2", 3),
        ("torchvision", "swin_t", "features.1", 2),
        ("torchvision", "densenet121", "block1", 6),
    ],
    ids=lambda value: str(value),
)
def test_fine_granularity_splits_a_stage_into_its_blocks(source: str, name: str, stage: str, blocks: int) -> None:
    model = build(source, name)
    stage_params = set(layer_groups(model, granularity="coarse").group(stage).params)
    inside = [group.name for group in layer_groups(model, granularity="fine") if set(group.params) <= stage_params]
    assert len(inside) >= blocks, f"{stage} has {blocks} blocks but its fine groups are {inside}"


@pytest.mark.parametrize(("source", "name"), ALL_ARCHS, ids=ARCH_IDS)
def test_fine_groups_refine_coarse_groups(source: str, name: str) -> None:
    model = build(source, name)
    coarse = layer_groups(model, granularity="coarse")
    fine = layer_groups(model, granularity="fine")
    for group in fine:
        owners = {coarse.owner(param).name for param in group.params}
        assert len(owners) == 1, f"fine group {group.name} straddles coarse groups {sorted(owners)}"
        assert group.role is coarse.owner(group.params[0]).role


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf"]
)
def test_fine_granularity_never_separates_a_conv_from_its_norm(name: str) -> None:
    from torchvision.ops.misc import Conv2dNormActivation

    model = build_torchvision(name)
    groups = layer_groups(model, granularity="fine")
    for module_name, module in model.named_modules():
        if isinstance(module, Conv2dNormActivation):
            owners = {groups.owner(f"{module_name}.{param}").name for param, _ in module.named_parameters()}
            assert len(owners) == 1, f"{module_name} (one conv-norm block) is split over groups {sorted(owners)}"


def test_an_unknown_granularity_is_an_error() -> None:
    with pytest.raises(GroupError, match="granularity must be 'coarse' or 'fine', got 'medium'"):
        layer_groups(build_timm("resnet10t"), granularity="medium")


# --- a parameter in no group or two groups ----------------------------------------------------------------


def test_a_parameter_in_no_group_is_an_error_that_names_it() -> None:
    model = build_timm("resnet10t")
    params = [name for name, _ in model.named_parameters()]
    assignment = [
        ("trunk", "backbone", [p for p in params if not p.startswith(("fc.", "layer3.0.bn1."))]),
        ("head", "head", [p for p in params if p.startswith("fc.")]),
    ]
    with pytest.raises(GroupError, match=r"parameter 'layer3\.0\.bn1\.weight' \(and 1 more\) matches no layer group"):
        LayerGroups.partition(model, assignment)


def test_a_parameter_in_two_groups_is_an_error_that_names_it_and_both_groups() -> None:
    model = build_timm("resnet10t")
    params = [name for name, _ in model.named_parameters()]
    assignment = [
        ("trunk", "backbone", [p for p in params if not p.startswith("fc.")]),
        ("head", "head", [p for p in params if p.startswith(("fc.", "layer4.0.conv2."))]),
    ]
    with pytest.raises(
        GroupError, match=r"parameter 'layer4\.0\.conv2\.weight' is in two layer groups, 'trunk' and 'head'"
    ):
        LayerGroups.partition(model, assignment)


def test_a_group_naming_something_that_is_not_a_parameter_is_an_error() -> None:
    model = build_timm("resnet10t")
    params = [name for name, _ in model.named_parameters()]
    with pytest.raises(GroupError, match=r"group 'head' names 'fc\.scale', which is not a parameter"):
        LayerGroups.partition(model, [("all", "backbone", params), ("head", "head", ["fc.scale"])])


def test_an_unknown_role_in_a_partition_is_a_group_error_naming_the_group_and_role() -> None:
    model = build_timm("resnet10t")
    params = [name for name, _ in model.named_parameters()]
    with pytest.raises(GroupError, match=r"group 'all'.*'trunk'.*backbone, neck, head"):
        LayerGroups.partition(model, [("all", "trunk", params)])


class TimmStyleNet(nn.Module):
    """A model that describes its own groups the way timm models do (``group_matcher``)."""

    def __init__(self, patterns: dict[str, str]) -> None:
        super().__init__()
        self.patterns = patterns
        self.stem = nn.Conv2d(3, 8, 3)
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
        self.gate = nn.LayerNorm(8)  # registered between the blocks and the late stage
        self.late = nn.Sequential(nn.Conv2d(8, 8, 1))
        self.fc = nn.Linear(8, 3)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return self.patterns

    def get_classifier(self) -> nn.Module:
        return self.fc


def test_a_group_matcher_that_misses_a_mid_model_parameter_is_an_error_naming_it() -> None:
    model = TimmStyleNet({"stem": r"^stem", "blocks": r"^blocks\.(\d+)", "late": r"^late"})
    with pytest.raises(
        GroupError, match=r"TimmStyleNet: parameter 'gate\.weight' matches no group of timm's group_matcher"
    ):
        layer_groups(model)


def test_a_group_matcher_that_names_every_mid_model_parameter_partitions_the_model() -> None:
    model = TimmStyleNet({"stem": r"^stem", "blocks": r"^blocks\.(\d+)", "gate": r"^gate", "late": r"^late"})
    groups = layer_groups(model)
    assert groups.names()[0] == "stem"
    assert groups.owner("gate.weight").role is Role.BACKBONE
    assert groups[-1].role is Role.HEAD
    assert set(groups[-1].params) == {"fc.weight", "fc.bias"}


# --- a plugin overrides the groups of one architecture --------------------------------------------------------


class TwoGroupsForResNet:
    """A throwaway plugin: torchvision ResNets get 'trunk' + 'classifier', nothing else changes."""

    @zoo_core.hookimpl
    def zoo_layer_groups(self, model, spec, granularity):
        if type(model).__name__ != "ResNet" or not type(model).__module__.startswith("torchvision"):
            return None
        params = [name for name, _ in model.named_parameters()]
        return [
            ("trunk", "backbone", [p for p in params if not p.startswith("fc.")]),
            ("classifier", "head", ["fc.weight", "fc.bias"]),
        ]


def test_a_plugin_overrides_the_groups_of_one_architecture(make_registry) -> None:
    registry = make_registry(TwoGroupsForResNet())
    groups = layer_groups(build_torchvision("resnet18"), registry=registry)
    assert groups.names() == ["trunk", "classifier"]
    assert [group.role for group in groups] == [Role.BACKBONE, Role.HEAD]


def test_a_plugin_override_leaves_other_architectures_alone(make_registry) -> None:
    registry = make_registry(TwoGroupsForResNet())
    model = build_torchvision("mobilenet_v3_small")
    assert layer_groups(model, registry=registry).names() == layer_groups(model, registry=make_registry()).names()
    assert layer_groups(build_timm("resnet10t"), registry=registry).names()[0] == "stem"


def test_a_plugin_override_only_applies_where_it_is_registered(make_registry) -> None:
    assert layer_groups(build_torchvision("resnet18"), registry=make_registry()).names() == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]


class IncompleteGroups:
    """A broken throwaway plugin that forgets the classifier's bias."""

    @zoo_core.hookimpl
    def zoo_layer_groups(self, model, spec, granularity):
        params = [name for name, _ in model.named_parameters()]
        return [("everything", "backbone", [p for p in params if p != "fc.bias"])]


def test_a_plugin_whose_groups_miss_a_parameter_is_an_error_naming_it(make_registry) -> None:
    with pytest.raises(GroupError, match=r"parameter 'fc\.bias' matches no layer group"):
        layer_groups(build_torchvision("resnet18"), registry=make_registry(IncompleteGroups()))


# --- ZooModel tiers -------------------------------------------------------------------------------------------


def build_tier(name: str, num_classes: int = 3) -> nn.Module:
    with torch.device("meta"):
        return zoo_core.create_model(name, num_classes=num_classes)


def test_a_maxsight_t5_has_backbone_groups_then_neck_temporal_and_one_group_per_head() -> None:
    groups = layer_groups(build_tier("maxsight/t5"))
    assert groups.names() == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "neck",
        "temporal",
        "heads.classifier",
        "heads.distance",
        "heads.box",
    ]
    assert [group.role.value for group in groups] == ["backbone"] * 5 + ["neck"] * 2 + ["head"] * 3


def test_a_maxsight_temporal_group_holds_exactly_the_gru() -> None:
    model = build_tier("maxsight/t5")
    groups = layer_groups(model)
    gru = {f"neck.temporal.{name}" for name, _ in model.neck.temporal.named_parameters()}
    assert set(groups.group("temporal").params) == gru
    assert not gru & set(groups.group("neck").params)


def test_a_tier_without_neck_has_backbone_groups_then_its_head() -> None:
    groups = layer_groups(build_tier("maxsight/t1"))
    assert groups.names() == ["stem", "layer1", "layer2", "layer3", "layer4", "heads.classifier"]
    assert all(param.startswith("backbone.") for group in groups[:-1] for param in group.params)
    assert set(groups[-1].params) == {"heads.classifier.fc.weight", "heads.classifier.fc.bias"}


def test_a_hand_built_zoomodel_gets_backbone_neck_and_head_groups() -> None:
    from zoo_core.heads import LinearHead, strip_classifier
    from zoo_core.zoomodel import MlpNeck, ZooModel

    backbone = timm.create_model("resnet10t", pretrained=False)
    width = strip_classifier(backbone)
    model = ZooModel(
        backbone, {"cls": LinearHead(16, 3), "reg": LinearHead(16, 1)}, MlpNeck(width, dim=16), feature_dim=16
    )
    groups = layer_groups(model)
    assert groups.names()[-3:] == ["neck", "heads.cls", "heads.reg"]
    assert [group.role for group in groups[-3:]] == [Role.NECK, Role.HEAD, Role.HEAD]
    assert all(group.role is Role.BACKBONE for group in groups[:-3])
    assert sorted(p for g in groups for p in g.params) == sorted(n for n, _ in model.named_parameters())


def test_groups_see_through_a_torch_compile_style_wrapper() -> None:
    model = build_timm("resnet10t")

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    assert layer_groups(Wrapper(model)).names() == layer_groups(model).names()


# --- the command line ---------------------------------------------------------------------------------------


def resnet50_expected_rows() -> list[tuple[str, str, int]]:
    model = build_timm("resnet50")
    prefixes = {
        "stem": ("conv1.", "bn1."),
        "layer1": ("layer1.",),
        "layer2": ("layer2.",),
        "layer3": ("layer3.",),
        "layer4": ("layer4.",),
        "head": ("fc.",),
    }
    rows = []
    for group, starts in prefixes.items():
        numel = sum(p.numel() for name, p in model.named_parameters() if name.startswith(starts))
        rows.append((group, "head" if group == "head" else "backbone", numel))
    return rows


def test_zoo_info_groups_prints_an_ordered_partition_with_counts_and_roles(zoo) -> None:
    result = zoo("info", "timm:resnet50", "--groups")
    assert result.code == 0, result
    lines = result.out.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ["#", "GROUP"])
    assert lines[header].split() == ["#", "GROUP", "ROLE", "PARAMETERS", "TENSORS"]
    rows = [line.split() for line in lines[header + 1 :] if line.strip()]
    expected = resnet50_expected_rows()
    assert [(row[1], row[2], int(row[3].replace(",", ""))) for row in rows] == expected
    assert [row[0] for row in rows] == [str(index) for index in range(len(expected))]


def test_zoo_info_groups_json_lists_groups_in_order_and_accounts_for_every_parameter(zoo) -> None:
    result = zoo("info", "timm:resnet50", "--groups", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert [(g["name"], g["role"], g["numel"]) for g in data["groups"]] == resnet50_expected_rows()
    assert sum(g["numel"] for g in data["groups"]) == data["parameters"] == 25_557_032
    assert sum(g["params"] for g in data["groups"]) == len(list(build_timm("resnet50").parameters()))


def test_zoo_info_groups_fine_splits_stages_into_blocks(zoo) -> None:
    result = zoo("info", "timm:resnet50", "--groups", "--fine", "--json")
    assert result.code == 0, result
    names = [g["name"] for g in json.loads(result.out)["groups"]]
    assert names[:4] == ["stem", "layer1.0", "layer1.1", "layer1.2"]
    assert names[-1] == "head" and len(names) == 1 + 3 + 4 + 6 + 3 + 1


def test_zoo_info_groups_of_a_tier_shows_neck_and_head_roles(zoo) -> None:
    result = zoo("info", "maxsight/t5", "--groups", "--json", "--num-classes", "4")
    assert result.code == 0, result
    rows = json.loads(result.out)["groups"]
    assert [(g["name"], g["role"]) for g in rows[-5:]] == [
        ("neck", "neck"),
        ("temporal", "neck"),
        ("heads.classifier", "head"),
        ("heads.distance", "head"),
        ("heads.box", "head"),
    ]
    assert rows[-3]["numel"] == 256 * 4 + 4


def test_zoo_info_groups_of_an_unknown_name_is_a_one_line_error(zoo) -> None:
    result = zoo("info", "timm:resnet5O", "--groups")
    assert result.code == 2
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error:") and "resnet5O" in lines[0]
