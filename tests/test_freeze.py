"""Freezing by layer group, with BatchNorm that stays frozen, proved by real optimizer steps.

Frozen means: parameters and BatchNorm buffers bitwise unchanged after training, no gradient,
and BatchNorm still in eval mode after any later ``.train()`` call (pytorch #66073). The
Lightning-style ``bn="train"`` lets statistics move (#15062); ``bn="eval"`` keeps them all.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_TIER
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import zoo_core
from zoo_core.errors import GroupError, RunError
from zoo_core.freeze import FreezeAudit, freeze, freeze_to, unfreeze
from zoo_core.groups import layer_groups
from zoo_core.optim import apply_learning_rates, build_optimizer, stage_learning_rates
from zoo_core.specs import LrSpec

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture
def model() -> nn.Module:
    """A real ZooModel from a project catalog: timm test_resnet backbone (BatchNorm), MLP neck, two heads."""
    Path("zoo.toml").write_text(TINY_TIER)
    torch.manual_seed(0)
    return zoo_core.create_model("tiny/t1", num_classes=3)


def loss_of(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
    images = torch.randn(4, 3, 16, 16, generator=generator)
    outputs = model(images)
    if isinstance(outputs, dict):
        labels = torch.randint(0, 3, (4,), generator=generator)
        return F.cross_entropy(outputs["classifier"], labels) + F.mse_loss(
            outputs["distance"], torch.randn(4, 1, generator=generator)
        )
    return F.cross_entropy(outputs, torch.randint(0, outputs.shape[1], (4,), generator=generator))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def train_steps(model: nn.Module, optimizer_kind: str = "adamw", steps: int = 3, lr: float = 1e-2) -> dict[str, bool]:
    """Real optimizer steps through Zoo's param groups; returns which parameters had a gradient."""
    groups = layer_groups(model)
    optimizer = build_optimizer(model, groups, kind=optimizer_kind)
    trainable = [g.name for g in groups if all(dict(model.named_parameters())[p].requires_grad for p in g.params)]
    apply_learning_rates(optimizer, stage_learning_rates(LrSpec(value=lr), groups, trainable))
    generator = torch.Generator().manual_seed(1)
    had_grad: dict[str, bool] = {}
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, generator).backward()
        had_grad = {name: param.grad is not None for name, param in model.named_parameters()}
        optimizer.step()
    return had_grad


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}


def tensors_of(model: nn.Module, group_names: list[str]) -> set[str]:
    """Parameters of the named groups plus the buffers of modules inside them."""
    groups = layer_groups(model)
    params = {p for name in group_names for p in groups.group(name).params}
    modules = {p.rsplit(".", 1)[0] for p in params}
    buffers = {name for name, _ in model.named_buffers() if name.rsplit(".", 1)[0] in modules}
    return params | buffers


def bn_modules(model: nn.Module, prefix: str) -> list[tuple[str, _BatchNorm]]:
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and name.startswith(prefix)
    ]
    assert found, f"no BatchNorm under {prefix!r}"
    return found


FROZEN_BY_LEVEL = {
    0: [],
    1: ["stem", "layer1", "layer2", "layer3", "layer4"],
    2: ["stem", "layer1", "layer2", "layer3", "layer4", "neck"],
}
OPTIMIZERS = ["adamw", "sgd"]


# --- freeze levels after real optimizer steps ---------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_freeze_level_freezes_groups_by_role(model: nn.Module, level: int) -> None:
    state = freeze(model, level)
    groups = layer_groups(model)
    assert list(state.frozen) == FROZEN_BY_LEVEL[level]
    assert list(state.trainable) == [name for name in groups.names() if name not in FROZEN_BY_LEVEL[level]]
    for group in groups:
        for param in group.params:
            assert model.get_parameter(param).requires_grad is (group.name not in FROZEN_BY_LEVEL[level])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("level", [1, 2])
def test_frozen_parameters_and_bn_buffers_are_bitwise_unchanged_after_real_steps(
    model: nn.Module, level: int, optimizer: str
) -> None:
    freeze(model, level)
    before = snapshot(model)
    train_steps(model, optimizer)
    frozen = tensors_of(model, FROZEN_BY_LEVEL[level])
    assert {name for name in frozen if name.endswith(BN_BUFFERS)}, "the frozen part has BatchNorm buffers"
    assert not changed(before, model) & frozen, f"frozen tensors moved: {sorted(changed(before, model) & frozen)[:5]}"


@pytest.mark.parametrize("level", [1, 2])
def test_frozen_parameters_get_no_gradient(model: nn.Module, level: int) -> None:
    freeze(model, level)
    had_grad = train_steps(model, steps=1)
    frozen_params = {p for p in tensors_of(model, FROZEN_BY_LEVEL[level]) if p in had_grad}
    assert frozen_params and not any(had_grad[p] for p in frozen_params)
    assert all(had_grad[p] for p in had_grad if p not in frozen_params)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("level", [0, 1, 2])
def test_trainable_parameters_and_their_bn_statistics_move(model: nn.Module, level: int, optimizer: str) -> None:
    freeze(model, level)
    before = snapshot(model)
    train_steps(model, optimizer)
    trainable_groups = [g.name for g in layer_groups(model) if g.name not in FROZEN_BY_LEVEL[level]]
    expected = {name for name in tensors_of(model, trainable_groups) if not name.endswith("num_batches_tracked")}
    assert expected - changed(before, model) == set()


def test_level_1_keeps_a_timm_backbone_bit_identical_including_bn_statistics() -> None:
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    freeze(net, 1)
    before = snapshot(net)
    train_steps(net, "sgd", steps=2)
    assert changed(before, net) == {"fc.weight", "fc.bias"}


def test_level_1_keeps_a_torchvision_backbone_bit_identical_including_bn_statistics() -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=3)
    freeze(net, 1)
    before = snapshot(net)
    train_steps(net, "adamw", steps=2)
    assert changed(before, net) == {
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.3.weight",
        "classifier.3.bias",
    }


# --- freeze_to(n) and explicit group lists ------------------------------------------------------------------


def test_freeze_to_n_freezes_the_first_n_groups_from_the_input(model: nn.Module) -> None:
    state = freeze_to(model, 3)
    assert list(state.frozen) == ["stem", "layer1", "layer2"]
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert not moved & tensors_of(model, ["stem", "layer1", "layer2"])
    assert moved >= {
        n for n in tensors_of(model, ["layer3", "heads.classifier"]) if not n.endswith("num_batches_tracked")
    }


def test_freeze_to_beyond_the_number_of_groups_is_an_error(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"freeze_to\(9\): the model has 8 groups"):
        freeze_to(model, 9)


def test_an_explicit_group_list_freezes_exactly_those_groups(model: nn.Module) -> None:
    state = freeze(model, groups=["stem", "layer2", "neck"])
    assert list(state.frozen) == ["stem", "layer2", "neck"]
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert not moved & tensors_of(model, ["stem", "layer2", "neck"])
    # layer1 sits between two frozen groups and still trains, BatchNorm statistics included
    assert {f"backbone.{n}" for n in ("layer1.0.bn1.running_mean", "layer1.0.conv1.weight")} <= moved


def test_a_train_list_freezes_everything_else(model: nn.Module) -> None:
    state = freeze(model, train=["layer4", "head"])
    assert list(state.trainable) == ["layer4", "heads.classifier", "heads.distance"]
    assert list(state.frozen) == ["stem", "layer1", "layer2", "layer3", "neck"]
    assert all(model.get_parameter(p).requires_grad is False for p in layer_groups(model).group("neck").params)


def test_freeze_level_3_is_an_error(model: nn.Module) -> None:
    with pytest.raises(
        GroupError, match=r"freeze level must be 0 \(none\), 1 \(backbone\) or 2 \(all but heads\), got 3"
    ):
        freeze(model, 3)


def test_freezing_an_unknown_group_is_an_error_that_suggests_the_closest(model: nn.Module) -> None:
    with pytest.raises(GroupError, match=r"freeze: unknown layer group 'layer5' - did you mean 'layer4'\?"):
        freeze(model, groups=["layer5"])
    assert all(p.requires_grad for p in model.parameters()), "a failed freeze must change nothing"


def test_freeze_takes_exactly_one_of_level_groups_or_train(model: nn.Module) -> None:
    with pytest.raises(TypeError, match="exactly one of level=, groups= or train="):
        freeze(model, 1, groups=["stem"])


# --- BatchNorm stays frozen across .train() -------------------------------------------------------------------


def test_frozen_bn_stays_in_eval_after_model_train(model: nn.Module) -> None:
    freeze(model, 1)
    model.train()
    assert all(not bn.training for _, bn in bn_modules(model, "backbone."))
    assert model.neck.training and model.heads.training


def test_frozen_bn_stays_in_eval_after_a_parent_module_calls_train(model: nn.Module) -> None:
    freeze(model, 1)
    parent = nn.Sequential(model)
    parent.eval()
    parent.train()
    assert all(not bn.training for _, bn in bn_modules(model, "backbone."))
    assert model.training


def test_frozen_bn_statistics_do_not_move_in_train_mode_forward_passes(model: nn.Module) -> None:
    freeze(model, 1)
    nn.Sequential(model).train()
    before = snapshot(model)
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    assert changed(before, model) == set()


def test_bn_train_mode_lets_running_statistics_move_while_frozen_parameters_stay(model: nn.Module) -> None:
    freeze(model, 1, bn="train")
    model.train()
    assert all(bn.training for _, bn in bn_modules(model, "backbone."))
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    backbone_params = {name for name, _ in model.named_parameters() if name.startswith("backbone.")}
    assert not moved & backbone_params
    assert {f"{name}.running_mean" for name, _ in bn_modules(model, "backbone.")} <= moved


def test_bn_eval_mode_keeps_every_bn_statistic_while_parameters_train(model: nn.Module) -> None:
    freeze(model, 0, bn="eval")
    model.train()
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    buffers = {f"{name}.{buffer}" for name, _ in bn_modules(model, "") for buffer in BN_BUFFERS}
    assert not moved & buffers
    assert {f"{name}.weight" for name, _ in bn_modules(model, "")} <= moved


def test_unfreeze_restores_training_behaviour(model: nn.Module) -> None:
    freeze(model, 1)
    state = unfreeze(model)
    assert state.frozen == ()
    model.train()
    assert all(bn.training for _, bn in bn_modules(model, ""))
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert {f"{name}.running_mean" for name, _ in bn_modules(model, "")} <= moved
    assert {name for name, _ in model.named_parameters() if name.endswith("conv1.weight")} <= moved


def test_unfreeze_lets_eval_mode_work_normally_again(model: nn.Module) -> None:
    freeze(model, 1)
    unfreeze(model)
    model.eval()
    assert not any(bn.training for _, bn in bn_modules(model, ""))
    model.train()
    assert all(bn.training for _, bn in bn_modules(model, ""))


# --- the freeze audit -----------------------------------------------------------------------------------


def test_the_audit_fingerprints_frozen_parameters_and_bn_buffers(model: nn.Module) -> None:
    freeze(model, 1)
    names = set(FreezeAudit(model).names)
    assert tensors_of(model, FROZEN_BY_LEVEL[1]) <= names
    assert not names & {name for name, _ in model.named_parameters() if not name.startswith("backbone.")}


def test_the_audit_is_empty_after_a_correct_run(model: nn.Module) -> None:
    freeze(model, 2)
    audit = FreezeAudit(model)
    train_steps(model, "sgd")
    assert audit.changed() == []
    audit.check()


def test_the_audit_reports_a_frozen_parameter_changed_in_place(model: nn.Module) -> None:
    freeze(model, 1)
    audit = FreezeAudit(model)
    train_steps(model)
    with torch.no_grad():
        model.get_parameter("backbone.layer3.0.conv2.weight").mul_(1.5)
    assert audit.changed() == ["backbone.layer3.0.conv2.weight"]


def test_the_audit_reports_a_frozen_bn_buffer_that_moved(model: nn.Module) -> None:
    freeze(model, 1)
    audit = FreezeAudit(model)
    model.backbone.layer1[0].bn1.running_var.add_(0.25)
    assert audit.changed() == ["backbone.layer1.0.bn1.running_var"]


def test_audit_check_raises_a_run_error_naming_the_changed_tensor(model: nn.Module) -> None:
    freeze(model, 1)
    audit = FreezeAudit(model)
    model.backbone.bn1.num_batches_tracked += 1
    with pytest.raises(RunError, match=r"frozen tensors changed: backbone\.bn1\.num_batches_tracked"):
        audit.check()


# --- pinning is invisible to state dicts, type checks and copies ---------------------------------------------


def test_freezing_keeps_state_dict_keys_and_batchnorm_type_checks(model: nn.Module) -> None:
    keys = list(model.state_dict())
    types = {name: type(module).__name__ for name, module in model.named_modules()}
    freeze(model, 1)
    assert list(model.state_dict()) == keys
    assert {name: type(module).__name__ for name, module in model.named_modules()} == types
    assert all(isinstance(bn, nn.BatchNorm2d) for _, bn in bn_modules(model, "backbone."))


def test_a_frozen_model_state_dict_loads_strictly_into_a_fresh_model(model: nn.Module, tmp_path: Path) -> None:
    freeze(model, 1)
    train_steps(model, steps=1)
    torch.save(model.state_dict(), tmp_path / "frozen.pt")
    torch.manual_seed(5)
    fresh = zoo_core.create_model("tiny/t1", num_classes=3)
    fresh.load_state_dict(torch.load(tmp_path / "frozen.pt", weights_only=True), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_a_deep_copy_of_a_frozen_model_keeps_its_bn_frozen(model: nn.Module) -> None:
    freeze(model, 1)
    clone = copy.deepcopy(model)
    clone.train()
    assert all(not bn.training for _, bn in bn_modules(clone, "backbone."))
    assert list(clone.state_dict()) == list(model.state_dict())
