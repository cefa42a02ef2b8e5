"""Optimizer param groups built once from LayerGroups, and learning rates per group and step.

Every parameter is in exactly one param group from the first step; norms, biases, tokens and
position embeddings get no weight decay; rates come from a {group or role: lr} table, a base
with a decay factor (ULMFiT's 2.6) or timm's layer decay; stages change only rates and
``requires_grad``, so ratios are exact at every step of warmup + cosine, a group unfrozen later
joins the same curve, and optimizer state survives stage changes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from conftest import TINY_TIER
from torch import nn

import zoo_core
from zoo_core.catalog import Where, lr_from_value
from zoo_core.engine.schedule import lr_factor
from zoo_core.errors import CatalogError, RecipeError
from zoo_core.freeze import apply_freeze, freeze, stage_schedule
from zoo_core.groups import layer_groups
from zoo_core.optim import apply_learning_rates, build_optimizer, current_rates, param_groups, stage_learning_rates
from zoo_core.specs import LrSpec, Recipe, SpecValueError, Stage

WHERE = Where("zoo.toml", "recipes.fast.stages[0].lr")
GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "neck", "heads.classifier", "heads.distance"]


@pytest.fixture
def model() -> nn.Module:
    """A real ZooModel from a project catalog: timm test_resnet backbone, MLP neck, two heads."""
    Path("zoo.toml").write_text(TINY_TIER)
    torch.manual_seed(0)
    return zoo_core.create_model("tiny/t1", num_classes=3)


def lr(value: object) -> LrSpec:
    """An ``lr`` exactly as a recipe in zoo.toml would spell it."""
    return lr_from_value(value, WHERE)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    optimizer.zero_grad(set_to_none=True)
    outputs = model(torch.randn(4, 3, 16, 16, generator=generator))
    loss = F.cross_entropy(outputs["classifier"], torch.randint(0, 3, (4,), generator=generator))
    (loss + F.mse_loss(outputs["distance"], torch.randn(4, 1, generator=generator))).backward()
    optimizer.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def moved(before: dict[str, torch.Tensor], model: nn.Module, group: str) -> list[str]:
    params = layer_groups(model).group(group).params
    return [p for p in params if not torch.equal(before[p], model.get_parameter(p))]


# --- built once, covering every parameter ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_param_groups_cover_every_parameter_exactly_once(model: nn.Module, kind: str) -> None:
    groups = layer_groups(model)
    optimizer = build_optimizer(model, groups, kind=kind)
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len(set(in_optimizer))
    assert set(in_optimizer) == {id(p) for p in model.parameters()}
    by_id = {id(p): name for name, p in model.named_parameters()}
    for param_group in optimizer.param_groups:
        owner = groups.group(param_group["zoo_group"])
        assert {by_id[id(p)] for p in param_group["params"]} <= set(owner.params)


def test_param_groups_follow_layer_group_order(model: nn.Module) -> None:
    optimizer = build_optimizer(model, layer_groups(model))
    order = list(dict.fromkeys(param_group["zoo_group"] for param_group in optimizer.param_groups))
    assert order == GROUPS


def test_build_optimizer_makes_adamw_or_sgd_with_momentum(model: nn.Module) -> None:
    groups = layer_groups(model)
    assert type(build_optimizer(model, groups, kind="adamw")) is torch.optim.AdamW
    sgd = build_optimizer(model, groups, kind="sgd", momentum=0.8)
    assert type(sgd) is torch.optim.SGD
    assert all(param_group["momentum"] == 0.8 for param_group in sgd.param_groups)


def test_frozen_groups_are_in_the_optimizer_from_the_start(model: nn.Module) -> None:
    freeze(model, 2)
    groups = layer_groups(model)
    optimizer = build_optimizer(model, groups)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    apply_learning_rates(optimizer, stage_learning_rates(lr(1e-3), groups, ["heads.classifier", "heads.distance"]))
    assert current_rates(optimizer) == {name: (1e-3 if name.startswith("heads.") else 0.0) for name in GROUPS}


# --- weight decay ------------------------------------------------------------------------------------------


def decays_by_name(model: nn.Module, groups=None, weight_decay: float = 0.05) -> dict[str, float]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    result = {}
    for param_group in param_groups(model, groups or layer_groups(model), weight_decay=weight_decay):
        for param in param_group["params"]:
            result[by_id[id(param)]] = param_group["weight_decay"]
    return result


def test_no_weight_decay_on_norms_biases_and_vit_tokens() -> None:
    vit = timm.create_model("test_vit", pretrained=False)
    decays = decays_by_name(vit)
    for name in (
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.bias",
        "norm.weight",
        "head.bias",
    ):
        assert decays[name] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight"):
        assert decays[name] == 0.05, name


def test_weight_decay_exclusion_agrees_with_timm_for_a_vit() -> None:
    vit = timm.create_model("test_vit", pretrained=False)
    timm_groups = timm.optim.param_groups_layer_decay(
        vit, weight_decay=0.05, no_weight_decay_list=vit.no_weight_decay()
    )
    by_id = {id(p): name for name, p in vit.named_parameters()}
    expected = {by_id[id(p)]: group["weight_decay"] for group in timm_groups for p in group["params"]}
    assert decays_by_name(vit) == expected


def test_no_weight_decay_on_torchvision_class_token_position_embedding_and_bn() -> None:
    import torchvision

    with torch.device("meta"):
        vit = torchvision.models.vit_b_16()
        resnet = torchvision.models.resnet18()
    vit_decays = decays_by_name(vit)
    assert vit_decays["class_token"] == vit_decays["encoder.pos_embedding"] == vit_decays["encoder.ln.weight"] == 0.0
    assert vit_decays["conv_proj.weight"] == vit_decays["encoder.layers.encoder_layer_0.mlp.0.weight"] == 0.05
    resnet_decays = decays_by_name(resnet)
    assert resnet_decays["bn1.weight"] == resnet_decays["layer1.0.bn1.bias"] == resnet_decays["fc.bias"] == 0.0
    assert resnet_decays["conv1.weight"] == resnet_decays["fc.weight"] == 0.05


def test_no_weight_decay_on_swin_relative_position_bias_tables() -> None:
    import torchvision

    with torch.device("meta"):
        swin = torchvision.models.swin_t()
    decays = decays_by_name(swin)
    tables = [name for name in decays if name.endswith("relative_position_bias_table")]
    assert tables and all(decays[name] == 0.0 for name in tables)


# --- learning rates per group --------------------------------------------------------------------------------


def test_an_explicit_mapping_sets_each_role_rate_and_a_group_name_beats_its_role(model: nn.Module) -> None:
    groups = layer_groups(model)
    spec = lr({"head": 1e-3, "neck": 1e-4, "backbone": 1e-5, "layer4": 3e-5})
    optimizer = build_optimizer(model, groups)
    apply_learning_rates(optimizer, stage_learning_rates(spec, groups, groups.names()))
    assert current_rates(optimizer) == {
        "stem": 1e-5,
        "layer1": 1e-5,
        "layer2": 1e-5,
        "layer3": 1e-5,
        "layer4": 3e-5,
        "neck": 1e-4,
        "heads.classifier": 1e-3,
        "heads.distance": 1e-3,
    }
    assert {param_group["lr"] for param_group in optimizer.param_groups if param_group["zoo_group"] == "layer4"} == {
        3e-5
    }


def test_a_head_name_beats_the_head_role(model: nn.Module) -> None:
    groups = layer_groups(model)
    rates = stage_learning_rates(
        lr({"heads": 1e-3, "heads.distance": 5e-3, "backbone": 1e-5, "neck": 1e-4}), groups, groups.names()
    )
    assert (rates["heads.classifier"], rates["heads.distance"]) == (1e-3, 5e-3)


def test_base_and_decay_divide_the_rate_by_2_6_once_per_group_below_the_heads(model: nn.Module) -> None:
    groups = layer_groups(model)
    rates = stage_learning_rates(lr({"base": 1e-3, "decay": 2.6}), groups, groups.names())
    expected = {
        "heads.classifier": 0,
        "heads.distance": 0,
        "neck": 1,
        "layer4": 2,
        "layer3": 3,
        "layer2": 4,
        "layer1": 5,
        "stem": 6,
    }
    for name, power in expected.items():
        assert rates[name] == pytest.approx(1e-3 / 2.6**power, rel=1e-12), name
    assert rates["layer4"] / rates["neck"] == pytest.approx(1 / 2.6, rel=1e-12)


def test_timm_style_layer_decay_matches_timms_own_layer_scales() -> None:
    vit = timm.create_model("test_vit", pretrained=False)
    groups = layer_groups(vit, granularity="fine")
    rates = stage_learning_rates(lr({"base": 1e-3, "layer_decay": 0.75}), groups, groups.names())
    timm_groups = timm.optim.param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.75)
    scale = {id(p): group["lr_scale"] for group in timm_groups for p in group["params"]}
    for name, param in vit.named_parameters():
        assert rates[groups.owner(name).name] / 1e-3 == pytest.approx(scale[id(param)], rel=1e-12), name
    assert len(set(scale.values())) == len(groups) == 8


def test_layer_decay_outside_0_1_is_a_catalog_error_naming_the_key() -> None:
    with pytest.raises(CatalogError) as error:
        lr({"base": 1e-3, "layer_decay": 1.5})
    assert str(error.value) == "zoo.toml: recipes.fast.stages[0].lr.layer_decay: must be in (0, 1], got 1.5"


def test_an_unknown_group_in_a_mapping_is_a_recipe_error_that_suggests_the_closest(model: nn.Module) -> None:
    groups = layer_groups(model)
    with pytest.raises(RecipeError, match=r"lr\.layr4: names no layer group or role - did you mean 'layer4'\?"):
        stage_learning_rates(
            lr({"head": 1e-3, "backbone": 1e-5, "neck": 1e-4, "layr4": 1e-4}), groups, groups.names(), where="lr"
        )


def test_an_unknown_role_in_a_mapping_is_a_recipe_error_naming_it(model: nn.Module) -> None:
    groups = layer_groups(model)
    with pytest.raises(RecipeError, match=r"lr\.trunk: names no layer group or role .*roles: backbone, neck, head"):
        stage_learning_rates(lr({"head": 1e-3, "trunk": 1e-5}), groups, ["heads.classifier"], where="lr")


def test_a_trainable_group_without_a_rate_is_a_recipe_error_naming_it(model: nn.Module) -> None:
    groups = layer_groups(model)
    with pytest.raises(RecipeError, match=r"no learning rate for trainable group 'neck' \(role neck\); add 'neck = …'"):
        stage_learning_rates(lr({"head": 1e-3, "backbone": 1e-5}), groups, groups.names())


def test_frozen_groups_need_no_rate_and_get_zero(model: nn.Module) -> None:
    groups = layer_groups(model)
    rates = stage_learning_rates(lr({"head": 1e-3}), groups, ["heads.classifier", "heads.distance"])
    assert rates == {name: (1e-3 if name.startswith("heads.") else 0.0) for name in GROUPS}


# --- ratios at every step of warmup + cosine ----------------------------------------------------------------


def expected_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_lr_ratios_between_groups_are_exact_at_every_step_of_warmup_and_cosine(model: nn.Module) -> None:
    groups = layer_groups(model)
    stage = Stage(epochs=3, lr=lr({"head": 1e-3, "neck": 1e-4, "backbone": 1e-5}), warmup_epochs=1)
    rates = stage_learning_rates(stage.lr, groups, groups.names())
    optimizer = build_optimizer(model, groups, kind="sgd")
    generator = torch.Generator().manual_seed(0)
    steps_per_epoch = 4
    seen = []
    for index in range(stage.epochs * steps_per_epoch):
        factor = lr_factor(stage, index, steps_per_epoch)
        assert factor == pytest.approx(expected_factor(index, 4, 12), abs=1e-15)
        apply_learning_rates(optimizer, rates, factor)
        step(model, optimizer, generator)
        now = current_rates(optimizer)
        for name in GROUPS:
            assert now[name] == rates[name] * factor
        assert now["heads.classifier"] / now["neck"] == pytest.approx(10.0, rel=1e-12)
        assert now["neck"] / now["layer2"] == pytest.approx(10.0, rel=1e-12)
        seen.append(now["heads.classifier"])
    assert seen[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and seen[-1] < seen[4]


def test_a_group_unfrozen_later_joins_the_same_warmup_cosine_curve(model: nn.Module) -> None:
    groups = layer_groups(model)
    stage = Stage(epochs=3, lr=lr({"base": 1e-3, "decay": 2.6}), train=("head",), unfreeze_every=1, warmup_epochs=1)
    schedule = stage_schedule(Recipe(name="gradual", stages=[stage]), groups)
    optimizer = build_optimizer(model, groups)
    generator = torch.Generator().manual_seed(0)
    steps_per_epoch = 3
    layout = [param_group["zoo_group"] for param_group in optimizer.param_groups]
    joined = {0: set(), 1: {"neck"}, 2: {"neck", "layer4"}}
    for epoch in range(stage.epochs):
        trainable = schedule(0, epoch)
        assert trainable == {"heads.classifier", "heads.distance"} | joined[epoch]
        apply_freeze(model, groups, [g.name for g in groups if g.name not in trainable])
        rates = stage_learning_rates(stage.lr, groups, trainable)
        before = snapshot(model)
        for index in range(steps_per_epoch):
            factor = lr_factor(stage, epoch * steps_per_epoch + index, steps_per_epoch)
            apply_learning_rates(optimizer, rates, factor)
            step(model, optimizer, generator)
            now = current_rates(optimizer)
            head = now["heads.classifier"]
            assert head == 1e-3 * factor
            for name, power in (("neck", 1), ("layer4", 2)):
                if name in trainable:
                    assert now[name] / head == pytest.approx(2.6**-power, rel=1e-12), (epoch, index, name)
                else:
                    assert now[name] == 0.0
        assert bool(moved(before, model, "neck")) is (epoch >= 1)
        assert bool(moved(before, model, "layer4")) is (epoch >= 2)
        assert not moved(before, model, "layer3")
    assert [param_group["zoo_group"] for param_group in optimizer.param_groups] == layout


def test_the_registry_hook_returns_the_built_in_gradual_unfreeze_schedule(model: nn.Module) -> None:
    groups = layer_groups(model)
    recipe = Recipe(name="gradual", stages=[Stage(epochs=4, lr=lr(1e-3), train=("heads",), unfreeze_every=2)])
    schedule = zoo_core.default_registry().plugins.hook.zoo_unfreeze_schedule(recipe=recipe, groups=groups)
    heads = {"heads.classifier", "heads.distance"}
    assert [schedule(0, epoch) for epoch in range(4)] == [heads, heads, heads | {"neck"}, heads | {"neck"}]


# --- optimizer state across stage changes ---------------------------------------------------------------------


def test_optimizer_state_is_kept_for_parameters_that_stay_trainable(model: nn.Module) -> None:
    groups = layer_groups(model)
    optimizer = build_optimizer(model, groups)
    generator = torch.Generator().manual_seed(0)
    head_weight = model.get_parameter("heads.classifier.fc.weight")
    neck_weight = model.get_parameter("neck.proj.0.weight")

    freeze(model, 2)  # stage 1: heads only
    apply_learning_rates(optimizer, stage_learning_rates(lr(1e-3), groups, ["heads.classifier", "heads.distance"]))
    for _ in range(2):
        step(model, optimizer, generator)
    exp_avg = optimizer.state[head_weight]["exp_avg"]
    remembered = exp_avg.clone()
    assert neck_weight not in optimizer.state

    freeze(model, 1)  # stage 2: the neck joins
    apply_learning_rates(
        optimizer, stage_learning_rates(lr(1e-3), groups, ["neck", "heads.classifier", "heads.distance"])
    )
    step(model, optimizer, generator)
    assert optimizer.state[head_weight]["exp_avg"] is exp_avg
    assert not torch.equal(exp_avg, remembered)  # updated in place, continuing from stage 1
    assert int(optimizer.state[head_weight]["step"]) == 3
    assert int(optimizer.state[neck_weight]["step"]) == 1
    assert not any(p in optimizer.state for p in model.backbone.parameters())


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_a_group_frozen_after_training_stops_moving_despite_optimizer_momentum(model: nn.Module, kind: str) -> None:
    groups = layer_groups(model)
    optimizer = build_optimizer(model, groups, kind=kind)
    generator = torch.Generator().manual_seed(0)
    freeze(model, 0)
    apply_learning_rates(optimizer, stage_learning_rates(lr(1e-2), groups, groups.names()))
    for _ in range(2):
        step(model, optimizer, generator)
    assert optimizer.state[model.get_parameter("backbone.layer2.0.conv1.weight")], "the backbone has momentum state"
    freeze(model, 1)
    apply_learning_rates(
        optimizer, stage_learning_rates(lr(1e-2), groups, ["neck", "heads.classifier", "heads.distance"])
    )
    before = snapshot(model)
    for _ in range(2):
        step(model, optimizer, generator)
    backbone = [name for name in before if name.startswith("backbone.")]
    assert all(torch.equal(before[name], model.state_dict()[name]) for name in backbone)
    assert moved(before, model, "neck")


@pytest.mark.parametrize(("cycle", "mult"), [(3, 1), (2, 2), (1, 3)])
def test_cosine_restarts_follows_torch_warm_restarts_step_by_step(cycle: int, mult: int) -> None:
    """Seed 001's schedule: the factor per step is torch's CosineAnnealingWarmRestarts stepped by fractional epochs."""
    stage = Stage(epochs=9, lr=lr(1.0), schedule="cosine_restarts", restart_epochs=cycle, restart_mult=mult)
    steps_per_epoch = 4
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cycle, T_mult=mult)
    for index in range(stage.epochs * steps_per_epoch):
        reference.step(index / steps_per_epoch)
        assert lr_factor(stage, index, steps_per_epoch) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-9), index


def test_cosine_restarts_needs_its_cycle_and_refuses_it_elsewhere() -> None:
    with pytest.raises(SpecValueError, match="restart_epochs.*needs the first cycle"):
        Stage(epochs=4, lr=lr(1e-3), schedule="cosine_restarts")
    with pytest.raises(SpecValueError, match="restart_epochs.*cosine_restarts' only, not 'cosine'"):
        Stage(epochs=4, lr=lr(1e-3), restart_epochs=2)
    with pytest.raises(SpecValueError, match="restart_mult.*>= 1"):
        Stage(epochs=4, lr=lr(1e-3), schedule="cosine_restarts", restart_epochs=2, restart_mult=0.5)
