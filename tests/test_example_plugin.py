"""The README's example tier plugin installs, is found through its entry point, and builds."""

from __future__ import annotations

import json

import torch
from conftest import ROOT

EXAMPLE = ROOT / "examples" / "zoo-tiny-tiers"


def test_example_plugin_is_listed_after_install(zoo, installed_packages, on_path) -> None:
    on_path(installed_packages(EXAMPLE))
    plugins = json.loads(zoo("plugins", "--json").out)
    record = next(p for p in plugins if p["name"] == "tiny")
    assert record["status"] == "loaded"
    assert record["distribution"] == "zoo-tiny-tiers"
    tiers = zoo("tiers", "tiny")
    assert tiers.code == 0
    assert "tiny/t1" in tiers.out and "tiny/t2" in tiers.out


def test_example_tier_builds_with_its_neck_and_heads(installed_packages, on_path, make_registry) -> None:
    on_path(installed_packages(EXAMPLE))
    from zoo_core.models import create_model

    registry = make_registry()
    model = create_model("tiny/t2", num_classes=3, registry=registry)
    outputs = model(torch.zeros(2, 3, 32, 32))
    assert outputs["classifier"].shape == (2, 3)
    assert outputs["quality"].shape == (2, 1)
    assert model.neck.out_features == 128


def test_example_rules_carry_backbone_and_classifier_from_t1_to_t2(installed_packages, on_path, make_registry) -> None:
    on_path(installed_packages(EXAMPLE))
    from zoo_core.models import create_model
    from zoo_core.plans import plan_transfer
    from zoo_core.transfer import Action

    registry = make_registry()
    t1 = create_model("tiny/t1", num_classes=3, registry=registry)
    plan = plan_transfer(t1, "tiny/t2", num_classes=3, registry=registry)
    actions = {entry.target: entry.action for entry in plan.entries}
    assert actions["backbone.conv1.0.weight"] is Action.COPY
    assert all(action is Action.NEW for target, action in actions.items() if target.startswith(("neck.", "heads.quality.")))
    # t1's classifier reads 512 backbone features, t2's the 128-wide neck: only the bias fits
    assert actions["heads.classifier.fc.weight"] is Action.NEW
    assert actions["heads.classifier.fc.bias"] is Action.COPY
