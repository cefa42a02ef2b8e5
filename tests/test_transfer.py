"""TransferPlan: every target tensor gets an action, every unused source tensor a reason.

Plans are checked against expectations computed independently from the two state dicts, between
real timm and torchvision architectures (small, ``pretrained=False``). Applying a plan writes
exactly the planned tensors, or nothing when a check fails. Seed 000's MaxSight T2 -> T5 transfer
and seed 004's partial loading / architecture adaptation are expressed as plans and rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from conftest import scrambled
from torch import nn

import zoo_core as zoo
from zoo_core.checkpoint import read_checkpoint, read_tensor_info, save_checkpoint, save_safetensors
from zoo_core.errors import CheckpointError, TransferError
from zoo_core.groups import layer_groups
from zoo_core.plans import plan_transfer
from zoo_core.provenance import make_provenance
from zoo_core.specs import TransferRules
from zoo_core.transfer import Action, TransferPlan

# --- helpers -------------------------------------------------------------------------------------




def timm_model(arch: str = "resnet10t", num_classes: int = 5, seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return scrambled(timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs), seed)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def actions(plan: TransferPlan) -> dict[str, str]:
    return {entry.target: entry.action.value for entry in plan.entries}


def reasons(plan: TransferPlan) -> dict[str, str]:
    return {item.source: item.reason.value for item in plan.unused}


def entry(plan: TransferPlan, target: str) -> Any:
    return next(e for e in plan.entries if e.target == target)


def plan_body(plan: TransferPlan) -> dict[str, Any]:
    """``to_dict()`` without the ``source`` block, which says where tensors came from (a path or memory)."""
    body = plan.to_dict()
    body.pop("source")
    return body


def dotted_suffix(a: str, b: str) -> bool:
    """Whether the shorter key (at least two components) is a whole dotted suffix of the longer."""
    x, y = a.split("."), b.split(".")
    n = min(len(x), len(y))
    return n >= 2 and x[-n:] == y[-n:]


def expected_name_plan(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Default rules, computed from the two state dicts: same name and shape -> copy, else new."""
    both = [key for key in target if key in source]
    copy = [key for key in both if source[key].shape == target[key].shape]
    shape = [key for key in both if source[key].shape != target[key].shape]
    new = [key for key in target if key not in copy]
    no_target = [key for key in source if key not in target]
    # the expectation holds only if the suffix fallback has nothing to match
    leftovers = [(t, s) for t in new if t not in source for s in no_target if dotted_suffix(t, s)]
    assert not leftovers, f"test premise broken: suffix candidates {leftovers[:3]}"
    return {"copy": copy, "new": new, "shape": shape, "no target": no_target}


# --- plans between real architectures ---------------------------------------------------------------------


def test_timm_resnet10t_to_torchvision_resnet18_counts(tmp_path: Path) -> None:
    source = timm_model("resnet10t", num_classes=5)
    ckpt = tmp_path / "old.pt"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 60, "val_loss": 0.3}, ckpt)
    target = torchvision.models.resnet18(num_classes=3).state_dict()
    expected = expected_name_plan(source.state_dict(), target)

    plan = plan_transfer(ckpt, "torchvision:resnet18", num_classes=3)

    assert plan.counts() == {
        "copy": len(expected["copy"]),
        "rename": 0,
        "adapt": 0,
        "remap-classes": 0,
        "new": len(expected["new"]),
    }
    assert plan.unused_counts() == {
        "excluded": 0,
        "shape": len(expected["shape"]),
        "no target": len(expected["no target"]),
    }
    assert sorted(k for k, a in actions(plan).items() if a == "copy") == sorted(expected["copy"])
    assert sorted(k for k, r in reasons(plan).items() if r == "shape") == sorted(expected["shape"])
    assert [e.target for e in plan.entries] == list(target)  # every target tensor, in model order
    assert "fc.weight" in expected["shape"] and actions(plan)["fc.weight"] == "new"


def test_timm_resnet10t_to_timm_resnet50_on_the_meta_device_counts(tmp_path: Path) -> None:
    source = timm_model("resnet10t", num_classes=5)
    ckpt = tmp_path / "old.pt"
    torch.save(source.state_dict(), ckpt)
    with torch.device("meta"):
        target = timm.create_model("resnet50", pretrained=False, num_classes=3).state_dict()
    expected = expected_name_plan(source.state_dict(), target)

    plan = plan_transfer(ckpt, "timm:resnet50", num_classes=3)

    assert plan.counts()["copy"] == len(expected["copy"])
    assert plan.counts()["new"] == len(expected["new"])
    assert plan.unused_counts() == {
        "excluded": 0,
        "shape": len(expected["shape"]),
        "no target": len(expected["no target"]),
    }
    assert len(plan.entries) == len(target)


def test_torchvision_resnet18_to_timm_resnet18_copies_everything_and_computes_the_same_function() -> None:
    source = scrambled(torchvision.models.resnet18(num_classes=4), 1).eval()
    target = zoo.create_model("timm:resnet18", num_classes=4).eval()

    plan = plan_transfer(source, target)
    plan.apply(target)

    assert plan.counts()["copy"] == len(target.state_dict()) and plan.counts()["new"] == 0
    assert plan.unused_counts() == {"excluded": 0, "shape": 0, "no target": 0}
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(image), source(image))


def test_torchvision_mobilenet_to_timm_mobilenet_names_nothing_alike_and_carries_nothing() -> None:
    source = torchvision.models.mobilenet_v3_small(num_classes=3)
    target = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)
    expected = expected_name_plan(source.state_dict(), target.state_dict())

    plan = plan_transfer(source, target)

    assert expected["copy"] == [] and plan.counts()["new"] == len(target.state_dict())
    assert plan.unused_counts() == {"excluded": 0, "shape": 0, "no target": len(source.state_dict())}
    assert plan.coverage_of("backbone") == 0.0


# --- rename, include/exclude, suffix matching --------------------------------------------------------


def prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value for key, value in state.items()}


def test_rename_rules_are_regex_substitutions_applied_in_order() -> None:
    """MMEngine's ``revise_keys=[(r'^encoder\\.', 'body.'), (r'^body\\.', '')]``."""
    source = prefixed(timm_model().state_dict(), "encoder.")
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    without = plan_transfer(source, target, rules=TransferRules(suffix_match=False))
    plan = plan_transfer(
        source, target, rules=TransferRules(rename=[(r"^encoder\.", "body."), (r"^body\.", "")], suffix_match=False)
    )

    assert without.counts()["new"] == len(target.state_dict())
    assert set(actions(plan).values()) == {"rename"}
    assert entry(plan, "layer1.0.conv1.weight").source == "encoder.layer1.0.conv1.weight"


def test_renamed_tensors_are_applied_under_their_new_names() -> None:
    state = timm_model(seed=3).state_dict()
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    plan = plan_transfer(prefixed(state, "encoder."), target, rules=TransferRules(rename=[(r"^encoder\.", "")]))
    plan.apply(target)

    assert all(torch.equal(target.state_dict()[key], value) for key, value in state.items())


def test_exclude_leaves_sources_unused_as_excluded_and_their_targets_new() -> None:
    source = timm_model()
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    plan = plan_transfer(source, target, rules=TransferRules(exclude=[r"^fc\."]))

    assert reasons(plan) == {"fc.weight": "excluded", "fc.bias": "excluded"}
    assert actions(plan)["fc.weight"] == "new" and entry(plan, "fc.weight").note == "excluded by rules"
    assert plan.counts()["copy"] == len(target.state_dict()) - 2


def test_include_keeps_only_matching_sources() -> None:
    source = timm_model()
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    layer4 = [key for key in source.state_dict() if key.startswith("layer4.")]

    plan = plan_transfer(source, target, rules=TransferRules(include=[r"^layer4\."]))

    assert sorted(k for k, a in actions(plan).items() if a == "copy") == sorted(layer4)
    assert plan.unused_counts() == {"excluded": len(source.state_dict()) - len(layer4), "shape": 0, "no target": 0}


def test_suffix_matching_aligns_a_plain_checkpoint_with_a_model_that_nests_it() -> None:
    """Detectron2's direction: target ``backbone.blocks.0.0.conv_pw.weight`` ends with source
    ``blocks.0.0.conv_pw.weight``."""
    source = timm_model("mobilenetv3_small_050", num_classes=5).state_dict()

    plan = plan_transfer(source, "lite/t1", num_classes=5)

    renamed = {e.target: e.source for e in plan.entries if e.action.value == "rename"}
    assert renamed == {f"backbone.{key}": key for key in source if not key.startswith("classifier.")}
    assert all("suffix match" in e.note for e in plan.entries if e.action.value == "rename")
    assert reasons(plan) == {"classifier.weight": "no target", "classifier.bias": "no target"}


def test_suffix_matching_aligns_a_checkpoint_that_nests_the_model() -> None:
    """A backbone saved inside a detector (``backbone.body.*``) fits a plain model: ``bn1.weight`` is
    ``backbone.body.bn1.weight``, not ``backbone.body.layer1.0.bn1.weight``, whose ``layer1.0`` nothing explains."""
    state = timm_model().state_dict()
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    plan = plan_transfer(prefixed(state, "backbone.body."), target)

    assert set(actions(plan).values()) == {"rename"}
    assert entry(plan, "bn1.weight").source == "backbone.body.bn1.weight"
    found = entry(plan, "layer2.0.bn1.running_var")
    assert found.source == "backbone.body.layer2.0.bn1.running_var" and "suffix match" in found.note


def test_suffix_matching_can_be_disabled() -> None:
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    plan = plan_transfer(
        prefixed(timm_model().state_dict(), "backbone.body."), target, rules=TransferRules(suffix_match=False)
    )

    assert plan.counts()["new"] == len(target.state_dict())
    assert set(reasons(plan).values()) == {"no target"}


def test_an_ambiguous_suffix_match_is_an_error_naming_the_candidates() -> None:
    """A checkpoint holding a student and a teacher (or model and EMA) copy fits every target twice."""
    state = timm_model().state_dict()
    source = {**prefixed(state, "student."), **prefixed(state, "teacher.")}
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    with pytest.raises(
        TransferError,
        match=r"ambiguous suffix match for target 'conv1\.0\.weight'.*'student\.conv1\.0\.weight'.*'teacher\.conv1",
    ):
        plan_transfer(source, target)


def test_rename_rules_mapping_two_sources_onto_one_target_are_an_error() -> None:
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    with pytest.raises(
        TransferError, match=r"rename rules map two source tensors onto 'fc\.weight': 'fc\.weight' and 'fc\.bias'"
    ):
        plan_transfer(timm_model(), target, rules=TransferRules(rename=[(r"^fc\.bias$", "fc.weight")]))


def test_include_rules_see_the_renamed_keys() -> None:
    """Renaming comes first (seed 004 and MMEngine filter the mapped key), so an include rule written
    for the target's names keeps the sources that a rename maps onto them."""
    state = {re.sub(r"^layer4\.", "stage4.", key): value for key, value in timm_model().state_dict().items()}
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    plan = plan_transfer(state, target, rules=TransferRules(include=[r"^layer4\."], rename=[(r"^stage4\.", "layer4.")]))

    layer4 = [key for key in target.state_dict() if key.startswith("layer4.")]
    assert {k for k, a in actions(plan).items() if a == "rename"} == set(layer4)


def test_prefixes_of_wrapped_models_are_stripped_by_default(tmp_path: Path) -> None:
    state = timm_model().state_dict()
    ckpt = tmp_path / "ddp.pt"
    torch.save({"model_state_dict": prefixed(state, "module._orig_mod.")}, ckpt)

    plan = plan_transfer(ckpt, "timm:resnet10t", num_classes=5, rules=TransferRules(suffix_match=False))

    assert set(actions(plan).values()) == {"copy"}


# --- shape policy ---------------------------------------------------------------------------------------


def test_shape_policy_skip_leaves_mismatched_tensors_new_and_reports_them() -> None:
    target = timm.create_model("resnet10t", pretrained=False, num_classes=8)

    plan = plan_transfer(timm_model(num_classes=5), target, rules=TransferRules(shape="skip"))

    assert actions(plan)["fc.weight"] == "new" and actions(plan)["fc.bias"] == "new"
    assert reasons(plan) == {"fc.weight": "shape", "fc.bias": "shape"}
    assert "target fc.weight is [8, 512]" in next(u.note for u in plan.unused if u.source == "fc.weight")


def test_shape_policy_adapt_pads_and_keeps_the_target_init_outside_the_overlap() -> None:
    source = timm_model(num_classes=5)
    target = timm.create_model("resnet10t", pretrained=False, num_classes=8)
    before = snapshot(target)

    plan = plan_transfer(source, target, rules=TransferRules(shape="adapt"))
    plan.apply(target)

    assert actions(plan)["fc.weight"] == "adapt" and "truncate/pad [5, 512]->[8, 512]" in entry(plan, "fc.weight").note
    weight, bias = target.fc.weight.detach(), target.fc.bias.detach()
    assert torch.equal(weight[:5], source.fc.weight.detach()) and torch.equal(bias[:5], source.fc.bias.detach())
    assert torch.equal(weight[5:], before["fc.weight"][5:]) and torch.equal(bias[5:], before["fc.bias"][5:])


def test_shape_policy_adapt_truncates_to_the_overlap() -> None:
    source = timm_model(num_classes=5)
    target = timm.create_model("resnet10t", pretrained=False, num_classes=3)

    plan_transfer(source, target, rules=TransferRules(shape="adapt")).apply(target)

    assert torch.equal(target.fc.weight.detach(), source.fc.weight.detach()[:3])


def adapt_input_conv_reference(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    adapt = getattr(timm.models, "adapt_input_conv", None)
    if adapt is not None:
        return adapt(in_chans, weight.clone())
    if in_chans == 1:  # the documented formula: sum RGB for one channel, else repeat and rescale
        return weight.sum(dim=1, keepdim=True)
    return weight.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_first_conv_is_adapted_to_other_input_channels_like_timm(in_chans: int) -> None:
    source = timm_model(num_classes=5)
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=in_chans)

    plan = plan_transfer(source, target, rules=TransferRules(shape="adapt"))
    plan.apply(target)

    assert {k: a for k, a in actions(plan).items() if a != "copy"} == {"conv1.0.weight": "adapt"}
    assert entry(plan, "conv1.0.weight").note == f"input channels 3->{in_chans}"
    expected = adapt_input_conv_reference(in_chans, source.state_dict()["conv1.0.weight"])
    torch.testing.assert_close(target.state_dict()["conv1.0.weight"], expected, rtol=0, atol=1e-6)


def test_first_conv_with_other_input_channels_is_skipped_under_the_skip_policy() -> None:
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1)

    plan = plan_transfer(timm_model(num_classes=5), target)

    assert actions(plan)["conv1.0.weight"] == "new"
    assert reasons(plan) == {"conv1.0.weight": "shape"}


# --- class-aware classifier rows --------------------------------------------------------------------------


SOURCE_CLASSES = ["cat", "dog", "bird", "fish", "frog"]


def classified_checkpoint(tmp_path: Path, classes: Sequence[str] = SOURCE_CLASSES) -> tuple[Path, nn.Module]:
    source = timm_model(num_classes=len(classes))
    path = tmp_path / "classes.pt"
    provenance = make_provenance(model="timm:resnet10t", num_classes=len(classes), class_names=classes)
    save_checkpoint(
        {"model_state_dict": source.state_dict(), "epoch": 60, "val_loss": 0.1, "provenance": provenance}, path
    )
    return path, source


def test_shared_classes_are_copied_by_name_and_others_keep_their_init(tmp_path: Path) -> None:
    ckpt, source = classified_checkpoint(tmp_path)
    target = zoo.create_model("timm:resnet10t", num_classes=3)
    before = snapshot(target)

    plan = plan_transfer(ckpt, target, target_classes=["dog", "cow", "cat"])
    plan.apply(target)

    assert actions(plan)["fc.weight"] == "remap-classes" and actions(plan)["fc.bias"] == "remap-classes"
    assert "2 of 3 classes by name" in entry(plan, "fc.weight").note
    weight, src = target.fc.weight.detach(), source.fc.weight.detach()
    assert torch.equal(weight[0], src[1])  # dog
    assert torch.equal(weight[2], src[0])  # cat
    assert torch.equal(weight[1], before["fc.weight"][1])  # cow is new
    assert torch.equal(target.fc.bias.detach()[0], source.fc.bias.detach()[1])


def test_the_same_classes_in_another_order_are_reordered(tmp_path: Path) -> None:
    ckpt, source = classified_checkpoint(tmp_path)
    target = zoo.create_model("timm:resnet10t", num_classes=5)

    plan_transfer(ckpt, target, target_classes=list(reversed(SOURCE_CLASSES))).apply(target)

    assert torch.equal(target.fc.weight.detach(), source.fc.weight.detach().flip(0))


def test_identical_class_lists_are_a_plain_copy(tmp_path: Path) -> None:
    ckpt, _ = classified_checkpoint(tmp_path)

    plan = plan_transfer(ckpt, zoo.create_model("timm:resnet10t", num_classes=5), target_classes=SOURCE_CLASSES)

    assert actions(plan)["fc.weight"] == "copy"


def test_with_class_names_on_one_side_only_the_classifier_follows_the_shape_policy(tmp_path: Path) -> None:
    ckpt, _ = classified_checkpoint(tmp_path)

    plan = plan_transfer(ckpt, zoo.create_model("timm:resnet10t", num_classes=3))

    assert actions(plan)["fc.weight"] == "new"
    assert reasons(plan)["fc.weight"] == "shape"


def test_class_aware_transfer_can_be_turned_off(tmp_path: Path) -> None:
    ckpt, _ = classified_checkpoint(tmp_path)

    plan = plan_transfer(
        ckpt,
        zoo.create_model("timm:resnet10t", num_classes=3),
        target_classes=["dog", "cow", "cat"],
        rules=TransferRules(class_aware=False),
    )

    assert actions(plan)["fc.weight"] == "new"


# --- coverage, policy, strict mode -------------------------------------------------------------------------


def expected_coverage(model: nn.Module, carried: set[str]) -> dict[str, float]:
    """Covered fraction (by element count) of each group and role, from the model's own tensors."""
    state = model.state_dict()
    groups = layer_groups(model)
    params = {p for g in groups for p in g.params}
    by_group: dict[str, list[str]] = {}
    for key in state:
        if not state[key].is_floating_point():
            continue  # counters (num_batches_tracked) hold no weights and count for nothing
        group = groups.owner(key if key in params else key.rsplit(".", 1)[0] + ".weight")  # BN buffers: their weight
        by_group.setdefault(group.name, []).append(key)
        by_group.setdefault(group.role.value, []).append(key)
    return {
        name: sum(state[k].numel() for k in keys if k in carried) / sum(state[k].numel() for k in keys)
        for name, keys in by_group.items()
    }


def test_coverage_is_reported_per_layer_group_and_role() -> None:
    source = timm_model("resnet10t", num_classes=5)
    target = zoo.create_model("timm:resnet14t", num_classes=3)
    carried = {
        k
        for k, v in source.state_dict().items()
        if k in target.state_dict() and v.shape == target.state_dict()[k].shape
    }

    plan = plan_transfer(source, target)

    expected = expected_coverage(target, carried)
    assert [row.name for row in plan.coverage] == layer_groups(target).names()
    for row in plan.coverage:
        assert row.fraction == pytest.approx(expected[row.name]), row.name
    assert plan.coverage_of("backbone") == pytest.approx(expected["backbone"])
    assert plan.coverage_of("heads") == plan.coverage_of("head") == 0.0
    assert 0 < plan.coverage_of("backbone") < 1


def test_coverage_of_an_unknown_group_is_an_error_listing_the_choices() -> None:
    plan = plan_transfer(timm_model(), timm.create_model("resnet10t", pretrained=False, num_classes=5))

    with pytest.raises(
        TransferError, match=r"coverage policy names 'trunk', which is no group or role \(choose from .*backbone"
    ):
        plan.coverage_of("trunk")


def test_a_backbone_coverage_policy_refuses_a_partial_backbone() -> None:
    plan = plan_transfer(timm_model("resnet10t"), zoo.create_model("timm:resnet14t", num_classes=5))

    with pytest.raises(TransferError, match=r"coverage policy not met: backbone is \d+\.\d% covered \([\d,]+ of [\d,]+ values\), 100% required"):
        plan.enforce({"backbone": 1.0})


def test_a_backbone_coverage_policy_accepts_a_new_head() -> None:
    plan = plan_transfer(timm_model("resnet10t", num_classes=5), zoo.create_model("timm:resnet10t", num_classes=3))

    plan.enforce({"backbone": 1.0})
    assert plan.coverage_of("backbone") == 1.0


def test_strict_mode_refuses_a_shape_mismatch() -> None:
    plan = plan_transfer(timm_model(num_classes=5), zoo.create_model("timm:resnet10t", num_classes=3))

    with pytest.raises(TransferError, match=r"strict transfer: source 'fc\.weight' \[5, 512\] does not fit"):
        plan.enforce(strict=True)


def test_strict_mode_refuses_targets_left_new() -> None:
    source = {k: v for k, v in timm_model().state_dict().items() if not k.startswith("fc.")}
    plan = plan_transfer(source, zoo.create_model("timm:resnet10t", num_classes=5))

    with pytest.raises(
        TransferError, match=r"strict transfer: 2 target tensors have no source \(e\.g\. fc\.weight, fc\.bias\)"
    ):
        plan.enforce(strict=True)


def test_strict_mode_accepts_a_complete_transfer() -> None:
    target = zoo.create_model("timm:resnet10t", num_classes=5)
    plan = plan_transfer(timm_model(num_classes=5), target)

    plan.enforce({"backbone": 1.0, "head": 1.0}, strict=True)  # raises when anything is left out

    assert plan.counts()["copy"] == len(target.state_dict()) and plan.coverage_of("head") == 1.0


# --- planning without loading tensors ----------------------------------------------------------------------


def test_a_plan_from_a_safetensors_header_equals_the_plan_from_its_loaded_tensors(tmp_path: Path) -> None:
    path = save_safetensors(timm_model().state_dict(), tmp_path / "old.safetensors")

    from_header = plan_transfer(path, "timm:resnet14t", num_classes=3)
    loaded = plan_transfer(read_checkpoint(path).state_dict, zoo.create_model("timm:resnet14t", num_classes=3))

    assert from_header.source._tensors is None  # nothing was read beyond the header
    assert plan_body(from_header) == plan_body(loaded)
    assert from_header.to_dict()["source"]["path"] == str(path)


def test_a_plan_from_a_memory_mapped_torch_file_equals_the_plan_from_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"model_state_dict": timm_model().state_dict(), "epoch": 60, "val_loss": 0.1}, path)

    from_file = plan_transfer(path, "timm:resnet14t", num_classes=3)
    loaded = plan_transfer(torch.load(path, weights_only=True)["model_state_dict"], "timm:resnet14t", num_classes=3)

    assert plan_body(from_file) == plan_body(loaded)


def test_planning_and_applying_read_a_torch_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo_core.checkpoint

    path = tmp_path / "old.pt"
    torch.save({"model_state_dict": timm_model().state_dict(), "epoch": 60, "val_loss": 0.1}, path)
    loads: list[object] = []
    original = zoo_core.checkpoint.torch_load
    monkeypatch.setattr(zoo_core.checkpoint, "torch_load", lambda *a, **k: loads.append(a) or original(*a, **k))
    target = zoo.create_model("timm:resnet14t", num_classes=3)

    plan_transfer(path, target).apply(target)

    assert len(loads) == 1  # memory-mapped once: the plan's shapes and the applied tensors come from it


def test_a_plan_against_a_meta_device_target_equals_the_plan_against_a_real_model() -> None:
    source = timm_model().state_dict()
    with torch.device("meta"):
        meta = zoo.create_model("timm:resnet14t", num_classes=3)
    real = zoo.create_model("timm:resnet14t", num_classes=3)

    assert next(meta.parameters()).is_meta
    assert plan_body(plan_transfer(source, meta)) == plan_body(plan_transfer(source, real))
    assert plan_body(plan_transfer(source, "timm:resnet14t", num_classes=3)) == plan_body(plan_transfer(source, real))


def test_planning_reads_only_the_safetensors_header_and_applying_reads_the_values(tmp_path: Path) -> None:
    state = timm_model().state_dict()
    path = save_safetensors(state, tmp_path / "w.safetensors")
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    data[header_end:] = b"\xff" * (len(data) - header_end)  # every float is now NaN; the header is intact
    path.write_bytes(bytes(data))
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)

    info, _ = read_tensor_info(path)
    plan = plan_transfer(path, target)

    assert {key: list(i.shape) for key, i in info.items()} == {key: list(t.shape) for key, t in state.items()}
    assert plan.counts()["copy"] == len(state)
    with pytest.raises(CheckpointError, match=r"w\.safetensors: NaN or infinite values"):
        plan.apply(target)


def test_the_plan_serialises_to_json_with_every_entry_and_reason() -> None:
    plan = plan_transfer(timm_model(num_classes=5), zoo.create_model("timm:resnet10t", num_classes=3))

    data = json.loads(plan.to_json())

    assert data["counts"] == plan.counts()
    assert {e["target"]: e["action"] for e in data["entries"]} == actions(plan)
    assert {u["source"]: u["reason"] for u in data["unused"]} == {"fc.weight": "shape", "fc.bias": "shape"}
    assert [row["name"] for row in data["coverage"]] == [row.name for row in plan.coverage]


# --- applying -----------------------------------------------------------------------------------------------


def test_apply_writes_exactly_the_planned_tensors() -> None:
    source = timm_model("resnet10t", num_classes=5)
    target = zoo.create_model("timm:resnet14t", num_classes=3)
    before = snapshot(target)

    plan = plan_transfer(source, target)
    plan.apply(target)

    after = target.state_dict()
    for item in plan.entries:
        if item.action.value == "new":
            assert torch.equal(after[item.target], before[item.target]), item.target
        else:
            assert torch.equal(after[item.target], source.state_dict()[item.source]), item.target
    assert plan.counts()["copy"] > 0 and plan.counts()["new"] > 0


def test_apply_writes_nothing_when_a_carried_source_tensor_is_not_finite() -> None:
    state = timm_model().state_dict()
    state["layer4.0.bn2.running_var"][0] = float("nan")  # late in the order: earlier tensors must stay untouched too
    target = zoo.create_model("timm:resnet10t", num_classes=5)
    before = snapshot(target)
    plan = plan_transfer(state, target)

    with pytest.raises(CheckpointError, match=r"NaN or infinite values in layer4\.0\.bn2\.running_var"):
        plan.apply(target)

    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())


def test_apply_to_a_model_that_is_not_the_planned_target_writes_nothing() -> None:
    plan = plan_transfer(timm_model(), zoo.create_model("timm:resnet10t", num_classes=5))
    other = zoo.create_model("timm:resnet10t", num_classes=7)
    before = snapshot(other)

    with pytest.raises(TransferError, match=r"tensor 'fc\.weight' \[5, 512\] is missing or has another shape"):
        plan.apply(other)

    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())


def test_apply_returns_the_plan_for_provenance() -> None:
    target = zoo.create_model("timm:resnet10t", num_classes=5)
    plan = plan_transfer(timm_model(), target)

    assert plan.apply(target) == plan.to_dict()


# --- seed 004: load_partial_state_dict and adapt_state_dict_for_architecture, as rules ---------------------


def seed_load_partial_state_dict(
    model: nn.Module, state_dict: dict, exclude_patterns: list, key_mapping: dict
) -> tuple:
    """Seed 004's hand-written partial loader (its selection logic, verbatim), as the reference."""
    model_state = model.state_dict()
    loaded, skipped = [], []
    for key, value in state_dict.items():
        target_key = key_mapping.get(key, key)
        if any(re.match(p, target_key) for p in exclude_patterns):
            skipped.append((key, "excluded by pattern"))
            continue
        if target_key not in model_state:
            skipped.append((key, "not in model"))
            continue
        if model_state[target_key].shape != value.shape:
            skipped.append((key, "shape mismatch"))
            continue
        loaded.append(target_key)
    return loaded, skipped


def test_seed_004_load_partial_state_dict_is_an_exclude_and_rename_plan() -> None:
    """``exclude_patterns=[r'fc\\..*']`` and ``key_mapping={old: new}`` become exclude and rename rules."""
    state = timm_model("resnet10t", num_classes=5).state_dict()
    state["stem_bn.weight"] = state.pop("bn1.weight")  # an old name the key mapping fixes
    target = zoo.create_model("timm:resnet14t", num_classes=5)
    key_mapping = {"stem_bn.weight": "bn1.weight"}

    loaded, skipped = seed_load_partial_state_dict(target, state, [r"fc\..*"], key_mapping)
    rules = TransferRules(
        exclude=[r"^fc\."], rename=[(f"^{re.escape(k)}$", v) for k, v in key_mapping.items()], suffix_match=False
    )
    plan = plan_transfer(state, target, rules=rules)

    carried = {e.target for e in plan.entries if e.action.value != "new"}
    assert carried == set(loaded)
    assert actions(plan)["bn1.weight"] == "rename"
    seed_reasons = {"excluded by pattern": "excluded", "not in model": "no target", "shape mismatch": "shape"}
    assert reasons(plan) == {key: seed_reasons[why] for key, why in skipped}


def test_seed_004_adapt_state_dict_for_architecture_is_the_adapt_shape_policy() -> None:
    """Seed 004 zero-fills outside the overlap; Zoo keeps the target's initialisation there instead."""
    source = timm_model("resnet10t", num_classes=5)
    target = zoo.create_model("timm:resnet14t", num_classes=8)
    before = snapshot(target)

    plan = plan_transfer(source, target, rules=TransferRules(shape="adapt"))
    plan.apply(target)

    after, src = target.state_dict(), source.state_dict()
    adapted = [e for e in plan.entries if e.action.value == "adapt"]
    assert adapted and not plan.unused_counts()["shape"]
    for item in adapted:
        shapes = zip(src[item.source].shape, after[item.target].shape, strict=True)
        overlap = tuple(slice(0, min(s, t)) for s, t in shapes)
        assert torch.equal(after[item.target][overlap], src[item.source][overlap]), item.target
        outside = torch.ones_like(after[item.target], dtype=torch.bool)
        outside[overlap] = False
        assert torch.equal(after[item.target][outside], before[item.target][outside]), item.target


# --- seed 000: MaxSight tiers --------------------------------------------------------------------------------


@pytest.fixture
def maxsight_t2_state() -> dict[str, torch.Tensor]:
    """A MaxSight T2 model's weights (built inside the test's isolated ZOO_HOME)."""
    torch.manual_seed(0)
    return scrambled(zoo.create_model("maxsight/t2", num_classes=4), 2).state_dict()


def test_maxsight_t2_to_t5_copies_what_is_shared_and_leaves_the_temporal_module_new(
    tmp_path: Path, maxsight_t2_state: dict[str, torch.Tensor]
) -> None:
    ckpt = tmp_path / "t2.pt"
    torch.save({"model_state_dict": maxsight_t2_state, "epoch": 80, "val_loss": 0.2}, ckpt)
    t5 = zoo.create_model("maxsight/t5", num_classes=4)
    shared = r"^(backbone\.|neck\.proj\.|heads\.)"
    expected_copy = {
        key
        for key, value in t5.state_dict().items()
        if re.match(shared, key) and key in maxsight_t2_state and maxsight_t2_state[key].shape == value.shape
    }

    plan = plan_transfer(ckpt, "maxsight/t5", num_classes=4)

    assert {k for k, a in actions(plan).items() if a == "copy"} == expected_copy
    assert plan.counts()["new"] == len(t5.state_dict()) - len(expected_copy)
    temporal = [e for e in plan.entries if e.target.startswith("neck.temporal.")]
    assert len(temporal) == 4 and all(e.action.value == "new" and e.group == "temporal" for e in temporal)
    assert {e.target for e in plan.entries if e.group == "temporal"} == {e.target for e in temporal}
    assert actions(plan)["neck.proj.0.weight"] == "copy"
    assert actions(plan)["heads.classifier.fc.weight"] == "copy" and actions(plan)["heads.distance.fc.weight"] == "copy"


def test_maxsight_t2_to_t5_report_and_json_show_the_temporal_group_new(
    maxsight_t2_state: dict[str, torch.Tensor],
) -> None:
    plan = plan_transfer(maxsight_t2_state, "maxsight/t5", num_classes=4)

    rows = {line.split()[0]: line for line in plan.report().splitlines() if line.strip()}
    assert re.search(r"temporal\s+neck\s+0\.0%\s+0/4\s+4 new", rows["temporal"])
    assert re.search(r"neck\s+neck\s+100\.0%", rows["neck"])
    data = json.loads(plan.to_json())
    assert next(row for row in data["coverage"] if row["name"] == "temporal")["fraction"] == 0.0
    assert {e["action"] for e in data["entries"] if e["group"] == "temporal"} == {"new"}


def test_maxsight_t2_to_t5_applied_carries_the_shared_weights(maxsight_t2_state: dict[str, torch.Tensor]) -> None:
    t5 = zoo.create_model("maxsight/t5", num_classes=4)
    temporal_before = snapshot(t5.neck.temporal)

    plan_transfer(maxsight_t2_state, t5).apply(t5)

    state = t5.state_dict()
    assert torch.equal(state["backbone.conv1.0.weight"], maxsight_t2_state["backbone.conv1.0.weight"])
    assert torch.equal(state["heads.classifier.fc.weight"], maxsight_t2_state["heads.classifier.fc.weight"])
    assert all(torch.equal(t5.neck.temporal.state_dict()[k], v) for k, v in temporal_before.items())


def test_maxsight_legacy_key_names_are_renamed_for_bare_checkpoints(
    tmp_path: Path, maxsight_t2_state: dict[str, torch.Tensor]
) -> None:
    legacy_names = {
        r"^neck\.proj\.": "fpn.",
        r"^heads\.classifier\.fc\.": "classification_head.",
        r"^heads\.distance\.fc\.": "distance_head.",
    }
    legacy = {}
    for key, value in maxsight_t2_state.items():
        for pattern, replacement in legacy_names.items():
            key = re.sub(pattern, replacement, key)
        legacy[key] = value
    ckpt = tmp_path / "maxsight_t2_legacy.pth"
    torch.save(legacy, ckpt)

    plan = plan_transfer(ckpt, "maxsight/t2", num_classes=4)

    assert (
        actions(plan)["neck.proj.0.weight"] == "rename" and entry(plan, "neck.proj.0.weight").source == "fpn.0.weight"
    )
    assert entry(plan, "heads.classifier.fc.bias").source == "classification_head.bias"
    assert entry(plan, "heads.distance.fc.weight").source == "distance_head.weight"
    assert plan.counts()["new"] == 0 and plan.coverage_of("neck") == 1.0 and plan.coverage_of("head") == 1.0


def test_maxsight_t5_to_t2_excludes_the_temporal_module() -> None:
    t5 = zoo.create_model("maxsight/t5", num_classes=4)

    plan = plan_transfer(t5, "maxsight/t2", num_classes=4)

    temporal = {k: r for k, r in reasons(plan).items() if k.startswith("neck.temporal.")}
    assert len(temporal) == 4 and set(temporal.values()) == {"excluded"}


def test_seed_000_flow_validate_plan_apply_report(tmp_path: Path, maxsight_t2_state: dict[str, torch.Tensor]) -> None:
    from zoo_core.checkpoint import validate_training_checkpoint

    ckpt = tmp_path / "t2.pt"
    torch.save({"model_state_dict": maxsight_t2_state, "epoch": 20, "val_loss": 0.2}, ckpt)

    warnings = validate_training_checkpoint(read_checkpoint(ckpt))
    plan = plan_transfer(ckpt, "maxsight/t5", num_classes=4)
    plan.enforce({"neck": 1.0, "heads.classifier": 1.0})
    t5 = zoo.create_model("maxsight/t5", num_classes=4)
    record = plan.apply(t5)

    assert "trained for only 20 epochs" in warnings[0]
    assert record["counts"]["copy"] > 0 and "temporal" in plan.report()
    assert torch.equal(t5.state_dict()["neck.proj.0.weight"], maxsight_t2_state["neck.proj.0.weight"])


# --- policies that speak the truth --------------------------------------------------------------------------


def test_a_heads_policy_names_the_heads_left_new() -> None:
    """``--require heads=1.0`` means the head role, in the check and in its message."""
    plan = plan_transfer(timm_model(num_classes=5), zoo.create_model("timm:resnet10t", num_classes=3))

    with pytest.raises(TransferError, match=r"heads is 0\.0% covered .* \(2 tensors would stay new, e\.g\. fc\.weight, fc\.bias\)"):
        plan.enforce({"heads": 1.0})


def frozen_bn_detector_backbone() -> dict[str, torch.Tensor]:
    """A torchvision detector's backbone: ``backbone.body.*`` with FrozenBatchNorm2d (no counters), plus its FPN."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return {f"backbone.{key}": value for key, value in backbone.state_dict().items()}


def test_batchnorm_counters_do_not_count_against_coverage() -> None:
    source = frozen_bn_detector_backbone()
    assert not any(key.endswith("num_batches_tracked") for key in source)

    plan = plan_transfer(source, "torchvision:resnet18", rules=TransferRules(rename=[(r"^backbone\.body\.", "")]))

    plan.enforce({"backbone": 1.0})  # as PyTorch itself loads such a state dict strictly
    counters = [e for e in plan.entries if e.target.endswith("num_batches_tracked")]
    assert counters and all(e.action is Action.NEW and e.counter for e in counters)
    assert plan.coverage_of("backbone") == 1.0


def test_a_failed_policy_never_shows_the_fraction_it_misses() -> None:
    """99.999% is not "100.0% covered, 100% required … relax to 1.00"."""
    source = timm_model(num_classes=5).state_dict()
    source.pop("layer4.0.downsample.2.bias")  # 512 of about 4.9 million values
    plan = plan_transfer(source, zoo.create_model("timm:resnet10t", num_classes=5))

    with pytest.raises(TransferError) as caught:
        plan.enforce({"backbone": 1.0})

    message = str(caught.value)
    assert "99.9% covered" in message and "relax --require backbone=0.99" in message
    assert "100.0% covered" not in message


# --- plans between specs, and bare backbones into tiers ---------------------------------------------------


def test_a_plan_between_two_tiers_needs_no_weights() -> None:
    plan = plan_transfer("maxsight/t2", "maxsight/t5", num_classes=3)

    assert plan.source.path is None and not plan.source.has_data
    assert {e.target for e in plan.entries if e.action is Action.NEW and e.target.startswith("neck.temporal.")}
    assert plan.coverage_of("heads.classifier") == 1.0


def test_a_bare_backbone_is_carried_into_a_tiers_backbone() -> None:
    source = timm_model("resnet14t", num_classes=5).state_dict()

    plan = plan_transfer(source, "maxsight/t2", num_classes=3)

    carried = {e.target: e for e in plan.entries if e.action is not Action.NEW}
    assert plan.coverage_of("backbone") == 1.0
    assert carried["backbone.conv1.0.weight"].source == "conv1.0.weight"
    assert "as backbone.*" in carried["backbone.conv1.0.weight"].note
    assert {item.source for item in plan.unused} == {"fc.weight", "fc.bias"}  # the bare model's own classifier


def test_a_tiers_backbone_is_carried_into_a_bare_model(tmp_path: Path) -> None:
    tier = zoo.create_model("maxsight/t2", num_classes=3)
    state = {k: v for k, v in tier.state_dict().items() if k.startswith("backbone.")}

    plan = plan_transfer(state, "timm:resnet14t", num_classes=3)

    assert plan.coverage_of("backbone") == 1.0
    assert all(e.source == f"backbone.{e.target}" for e in plan.entries if e.role.value == "backbone" and not e.counter)


def test_a_plan_against_a_name_is_headed_by_the_architecture_not_its_weights() -> None:
    plan = plan_transfer(timm_model().state_dict(), "timm:resnet14t.c3_in1k", num_classes=3)

    assert plan.report().splitlines()[0] == "transfer state dict -> timm:resnet14t"


def test_input_channels_are_adapted_for_a_target_built_with_in_chans() -> None:
    source = timm_model(num_classes=5)
    target = zoo.create_model("timm:resnet10t", num_classes=5, in_chans=1)

    plan = plan_transfer(source, "timm:resnet10t", num_classes=5, in_chans=1)
    plan.apply(target)

    first = entry(plan, "conv1.0.weight")
    assert first.action is Action.ADAPT and first.note == "input channels 3->1"
    assert torch.allclose(target.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True))
