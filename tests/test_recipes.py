"""Recipes: the schema (validated with key paths), the built-in recipes that encode the seeds,
recipes from plugins, ``zoo recipes NAME`` and ``--set`` overrides.

Every schema error is exit 2 with one line ``zoo: error: FILE: KEY.PATH: message``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, write_image_folder
from conftest import assert_one_error as one_error_line

import zoo_core
from zoo_core.specs import LrSpec, Recipe, Stage

MODEL = "timm:test_resnet"
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8")


def write_project_recipe(stages: str, recipe_keys: str = "", name: str = "fast") -> Path:
    """``./zoo.toml`` with one recipe; ``stages`` is the TOML body of its stages."""
    path = Path("zoo.toml")
    path.write_text(f"[recipes.{name}]\n{recipe_keys}\n{stages}\n")
    return path


def stage_toml(body: str) -> str:
    return f"[[recipes.fast.stages]]\n{body}\n"


def table_rows(text: str) -> list[list[str]]:
    """Cells of a two-space-separated table (header first)."""
    start = next(i for i, line in enumerate(text.splitlines()) if line.startswith("#  STAGE"))
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[start:] if line.strip()]


# --- the schema, in ./zoo.toml --------------------------------------------------------------------

SCHEMA_ERRORS = {
    "lr-negative": ("epochs = 2\nfreeze = 2\nlr = -1", "recipes.fast.stages[0].lr: must be > 0, got -1"),
    "lr-zero": ("epochs = 2\nfreeze = 2\nlr = 0", "recipes.fast.stages[0].lr: must be > 0, got 0"),
    "lr-per-group": ("epochs = 2\nlr = { head = -1e-3 }", "recipes.fast.stages[0].lr.head: must be > 0, got -0.001"),
    "lr-base": ("epochs = 2\nlr = { base = 0, decay = 2.6 }", "recipes.fast.stages[0].lr.base: must be > 0, got 0"),
    "lr-decay-below-1": (
        "epochs = 2\nlr = { base = 1e-3, decay = 0.5 }",
        "recipes.fast.stages[0].lr.decay: divides the rate per group and must be >= 1, got 0.5",
    ),
    "lr-missing": ("epochs = 2", "recipes.fast.stages[0].lr: is required"),
    "unknown-stage-key": ("epoch = 2\nlr = 1e-3", "recipes.fast.stages[0].epoch: unknown key - did you mean 'epochs'?"),
    "freeze-level-3": (
        "epochs = 2\nfreeze = 3\nlr = 1e-3",
        "recipes.fast.stages[0].freeze: must be 0 (none), 1 (backbone) or 2 (all but heads), got 3",
    ),
    "warmup-over-epochs": (
        "epochs = 2\nwarmup_epochs = 3\nlr = 1e-3",
        "recipes.fast.stages[0].warmup_epochs: must not exceed epochs (2), got 3",
    ),
    "epochs-zero": ("epochs = 0\nlr = 1e-3", "recipes.fast.stages[0].epochs: must be a whole number > 0, got 0"),
    "schedule": (
        'epochs = 2\nlr = 1e-3\nschedule = "cosin"',
        "recipes.fast.stages[0].schedule: must be one of 'cosine', 'constant', 'linear', 'cosine_restarts', got 'cosin'",
    ),
    "bn": (
        'epochs = 2\nlr = 1e-3\nbn = "frozn"',
        "recipes.fast.stages[0].bn: must be one of 'frozen', 'train', 'eval', got 'frozn'",
    ),
    "ema": (
        "epochs = 2\nlr = 1e-3\nema = 1.5",
        "recipes.fast.stages[0].ema: is the EMA decay and must be between 0 and 1 (0 turns it off), got 1.5",
    ),
    "grad-clip": ("epochs = 2\nlr = 1e-3\ngrad_clip = 0", "recipes.fast.stages[0].grad_clip: must be > 0, got 0"),
    "batch-size": (
        "epochs = 2\nlr = 1e-3\nbatch_size = 0",
        "recipes.fast.stages[0].batch_size: must be a whole number > 0, got 0",
    ),
    "loss-scale": (
        "epochs = 2\nlr = 1e-3\nloss_scales = { cls = -1 }",
        "recipes.fast.stages[0].loss_scales.cls: must be >= 0, got -1",
    ),
    "early-stop-patience": (
        "epochs = 2\nlr = 1e-3\nearly_stop = { patience = 0 }",
        "recipes.fast.stages[0].early_stop.patience: must be a whole number > 0, got 0",
    ),
    "early-stop-key": (
        "epochs = 2\nlr = 1e-3\nearly_stop = { patiense = 2 }",
        "recipes.fast.stages[0].early_stop.patiense: unknown key - did you mean 'patience'?",
    ),
    "drift-action": (
        'epochs = 2\nlr = 1e-3\ndrift_guard = { action = "halt" }',
        "recipes.fast.stages[0].drift_guard.action: must be one of 'warn', 'stop', got 'halt'",
    ),
    "drift-band": (
        "epochs = 2\nlr = 1e-3\ndrift_guard = { band = -0.2 }",
        "recipes.fast.stages[0].drift_guard.band: must be > 0, got -0.2",
    ),
    "train-and-freeze": (
        'epochs = 2\nlr = 1e-3\ntrain = ["head"]\nfreeze = 2',
        "recipes.fast.stages[0].train: give either 'freeze' (a level) or 'train' (groups), not both",
    ),
    "train-not-a-list": (
        "epochs = 2\nlr = 1e-3\ntrain = 3",
        "recipes.fast.stages[0].train: must be a list of group names or roles",
    ),
    "augment-not-a-table": (
        "epochs = 2\nlr = 1e-3\naugment = 3",
        "recipes.fast.stages[0].augment: must be a table, got int 3",
    ),
    "unfreeze-every": (
        "epochs = 2\nlr = 1e-3\nunfreeze_every = 0",
        "recipes.fast.stages[0].unfreeze_every: must be a whole number > 0, got 0",
    ),
}


@pytest.mark.parametrize("body, expected", SCHEMA_ERRORS.values(), ids=SCHEMA_ERRORS.keys())
def test_project_recipe_errors_name_the_file_and_key_path(zoo, body, expected):
    write_project_recipe(stage_toml(body))
    line = one_error_line(zoo("recipes", "fast"))
    assert line.startswith(f"zoo: error: zoo.toml: {expected}")


def test_error_in_a_later_stage_names_its_index(zoo):
    write_project_recipe(stage_toml("epochs = 1\nlr = 1e-3") + stage_toml("epochs = 1\nlr = -1"))
    line = one_error_line(zoo("recipes"))
    assert line == "zoo: error: zoo.toml: recipes.fast.stages[1].lr: must be > 0, got -1"


def test_stage_learning_rate_above_the_recipe_max_lr_is_a_warning_that_check_lists(zoo):
    write_project_recipe(stage_toml("epochs = 1\nlr = 1e-3"), recipe_keys="max_lr = 1e-4")
    result = zoo("recipes", "fast", "--check")
    assert result.code == 0
    assert result.out.startswith("warning: recipe 'fast' stages[0]: lr 0.001 exceeds the recipe's max_lr 0.0001;")


def test_check_warns_about_a_jump_from_freeze_2_to_0_and_grid_norm_while_frozen(zoo):
    write_project_recipe(
        stage_toml('epochs = 1\nlr = 1e-4\nfreeze = 2\nloss_norm = ["grid"]')
        + stage_toml("epochs = 1\nlr = 1e-4\nfreeze = 0")
    )
    result = zoo("recipes", "fast", "--check", "--json")
    warnings = json.loads(result.out)["warnings"]
    assert len(warnings) == 2
    assert warnings[0].startswith("stages[0]: loss_norm grid while groups are frozen;")
    assert warnings[1].startswith("stages[0] -> stages[1]: freeze level jumps from 2 straight to 0;")


def test_check_passes_the_builtin_guide_recipes(zoo):
    for name in ("multigriddet-full", "multigriddet-backbone"):
        result = zoo("recipes", name, "--check", "--json")
        assert json.loads(result.out) == {"recipe": name, "warnings": []}


def test_check_needs_a_recipe_name(zoo):
    assert one_error_line(zoo("recipes", "--check")) == "zoo: error: --check needs a recipe: zoo recipes NAME --check"


RECIPE_ERRORS = {
    "optimizer": ('optimizer = "adam"', "recipes.fast.optimizer: must be one of 'adamw', 'sgd', got 'adam'"),
    "label-smoothing": ("label_smoothing = 2", "recipes.fast.label_smoothing: must be between 0 and 1, got 2"),
    "unknown-key": ("stage = 1", "recipes.fast.stage: unknown key - did you mean 'stages'?"),
}


@pytest.mark.parametrize("keys, expected", RECIPE_ERRORS.values(), ids=RECIPE_ERRORS.keys())
def test_recipe_level_errors_name_the_key_path(zoo, keys, expected):
    write_project_recipe(stage_toml("epochs = 1\nlr = 1e-3"), recipe_keys=keys)
    line = one_error_line(zoo("recipes", "fast"))
    assert line.startswith(f"zoo: error: zoo.toml: {expected}")


def test_recipe_without_stages_is_refused(zoo):
    write_project_recipe("", recipe_keys='description = "nothing"')
    line = one_error_line(zoo("recipes"))
    assert line == "zoo: error: zoo.toml: recipes.fast.stages: is required: a list of [[stages]] tables"


def test_early_stop_mode_error_names_the_key_path(zoo):
    write_project_recipe(stage_toml('epochs = 2\nlr = 1e-3\nearly_stop = { mode = "up" }'))
    line = one_error_line(zoo("recipes", "fast"))
    assert line.startswith("zoo: error: zoo.toml: recipes.fast.stages[0].early_stop.mode: ")
    assert "'up'" in line and "'min'" in line and "'max'" in line


def test_granularity_error_names_the_key_path(zoo):
    write_project_recipe(stage_toml("epochs = 1\nlr = 1e-3"), recipe_keys='granularity = "medium"')
    line = one_error_line(zoo("recipes", "fast"))
    assert line.startswith("zoo: error: zoo.toml: recipes.fast.granularity: ")
    assert "'medium'" in line and "'coarse'" in line and "'fine'" in line


def test_valid_project_recipe_is_listed_with_its_origin(zoo):
    write_project_recipe(
        stage_toml('name = "probe"\nepochs = 3\nfreeze = 2\nlr = 1e-3'), recipe_keys='description = "mine"'
    )
    result = zoo("recipes", "fast")
    assert result.code == 0, result
    assert result.out.splitlines()[0] == "fast: mine  (zoo.toml: recipes.fast)"
    assert table_rows(result.out)[1] == ["0", "probe", "3", "heads", "0.001", "cosine", "-", "frozen"]


# --- --set overrides: the same validation, on the command line ---------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", classes=3, per_class=8)


SET_ERRORS = {
    "lr-negative": (
        "multigriddet-full",
        "stages.1.lr=-1",
        "--set (recipe 'multigriddet-full'): stages[1].lr: must be > 0, got -1",
    ),
    "lr-zero": ("linear-probe", "stages.0.lr=0", "--set (recipe 'linear-probe'): stages[0].lr: must be > 0, got 0"),
    "unknown-stage-key": (
        "linear-probe",
        "stages.0.epoch=1",
        "--set (recipe 'linear-probe'): stages[0].epoch: unknown key - did you mean 'epochs'?",
    ),
    "freeze-level-3": (
        "linear-probe",
        "stages.0.freeze=3",
        "--set (recipe 'linear-probe'): stages[0].freeze: must be 0 (none), 1 (backbone) or 2 (all but heads), got 3",
    ),
    "warmup-over-epochs": (
        "multigriddet-full",
        "stages.0.warmup_epochs=9",
        "--set (recipe 'multigriddet-full'): stages[0].warmup_epochs: must not exceed epochs (5), got 9",
    ),
    "index-out-of-range": (
        "multigriddet-full",
        "stages.5.epochs=1",
        "--set stages.5.epochs=1: '5' is not an index of a list with 3 entries (use 0-2 or *)",
    ),
    "no-equals": (
        "linear-probe",
        "stages.0.epochs",
        "--set 'stages.0.epochs': expected KEY=VALUE, e.g. stages.0.epochs=1",
    ),
    "epochs-not-a-number": (
        "linear-probe",
        "stages.*.epochs=many",
        "--set (recipe 'linear-probe'): stages[0].epochs: must be a whole number > 0, got 'many'",
    ),
}


@pytest.mark.parametrize("recipe, override, expected", SET_ERRORS.values(), ids=SET_ERRORS.keys())
def test_set_override_errors_name_the_key_path_and_write_nothing(zoo, data, recipe, override, expected):
    result = zoo("finetune", "--recipe", recipe, "--model", MODEL, "--data", data, *FAST, "--set", override)
    assert one_error_line(result).startswith(f"zoo: error: {expected}")
    assert not Path("runs").exists()


def test_set_one_stage_changes_only_that_stage(registry):
    from zoo_core.engine.api import apply_overrides

    base = registry.recipe("multigriddet-full")
    changed = apply_overrides(base, ["stages.0.epochs=1"])
    assert [stage.epochs for stage in changed.stages] == [1, 5, 10]
    assert changed.stages[1:] == base.stages[1:]
    assert changed.stages[0].lr == base.stages[0].lr and changed.stages[0].freeze == 2


def test_set_star_changes_every_stage(registry):
    from zoo_core.engine.api import apply_overrides

    changed = apply_overrides(registry.recipe("multigriddet-full"), ["stages.*.epochs=1", "stages.*.schedule=constant"])
    assert [stage.epochs for stage in changed.stages] == [1, 1, 1]
    assert {stage.schedule.value for stage in changed.stages} == {"constant"}


def test_set_adds_nested_keys_and_parses_toml_values(registry):
    from zoo_core.engine.api import apply_overrides

    changed = apply_overrides(
        registry.recipe("lightweight-3stage"),
        [
            "stages.1.augment.hflip=0.5",
            "stages.2.lr={ head = 1e-3, neck = 1e-4, backbone = 1e-5 }",
            "batch_size=8",
            "stages.0.ema=0.99",
        ],
    )
    assert dict(changed.stages[1].augment) == {"hflip": 0.5}
    assert dict(changed.stages[2].lr.per_group) == {"head": 1e-3, "neck": 1e-4, "backbone": 1e-5}
    assert changed.batch_size == 8
    assert changed.stages[0].ema == 0.99
    assert changed.stages[0].grad_clip == 5.0  # values not named keep the recipe's


def test_set_merges_into_an_existing_augment_table(registry):
    from zoo_core.engine.api import apply_overrides

    changed = apply_overrides(registry.recipe("multigriddet-full"), ["stages.1.augment.mosaic=0.5"])
    assert dict(changed.stages[1].augment) == {"mosaic": 0.5, "mixup": 0.1}


def test_set_overrides_reach_the_run(zoo, data):
    result = zoo(
        "finetune", "--recipe", "linear-probe", "--model", MODEL, "--data", data, "--run-dir", "run", *FAST,
        "--set", "stages.0.epochs=2", "--set", "stages.*.lr=5e-4",
    )  # fmt: skip
    assert result.code == 0, result
    recorded = json.loads(Path("run/recipe.json").read_text())
    assert recorded["batch_size"] == 8
    assert [(stage["epochs"], stage["lr"]) for stage in recorded["stages"]] == [(2, 5e-4)]
    rows = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert {row["lr/head"] for row in rows} == {5e-4}


# --- the built-in recipes encode the seeds -----------------------------------------------------------


def test_multigriddet_full_is_heads_then_backbone_frozen_then_all(registry):
    recipe = registry.recipe("multigriddet-full")
    assert recipe.max_lr == 1e-4  # seed 002: learning rates never above 1e-4
    heads, neck, everything = recipe.stages
    assert (heads.epochs, heads.freeze, heads.lr.value, dict(heads.augment)) == (5, 2, 1e-4, {})
    assert (neck.epochs, neck.freeze, neck.lr.value, dict(neck.augment)) == (5, 1, 5e-5, {"mosaic": 0.3, "mixup": 0.1})
    assert (everything.freeze, everything.lr.value) == (0, 3e-5)
    assert dict(everything.augment) == {"mosaic": 0.3, "mixup": 0.1}
    # losses watched within ±20% of the pretrained values while layers are still frozen
    assert [stage.drift_guard.band for stage in (heads, neck)] == [0.2, 0.2]


def test_multigriddet_backbone_has_two_stages_frozen_backbone_then_all(registry):
    recipe = registry.recipe("multigriddet-backbone")
    assert [(stage.freeze, stage.lr.value) for stage in recipe.stages] == [(1, 1e-4), (0, 2e-4)]


def test_lightweight_3stage_rates_per_group(registry):
    recipe = registry.recipe("lightweight-3stage")
    assert [stage.train for stage in recipe.stages] == [("head",), ("head", "neck"), None]
    assert [stage.freeze for stage in recipe.stages] == [None, None, None]
    assert [dict(stage.lr.per_group) for stage in recipe.stages] == [
        {"head": 2e-3},
        {"head": 1e-3, "neck": 2e-4},
        {"head": 2e-4, "neck": 1e-4, "backbone": 2e-5},
    ]


def test_ulmfit_gradual_unfreezes_one_group_per_epoch_with_decay_2_6(registry):
    (stage,) = registry.recipe("ulmfit-gradual").stages
    assert stage.train == ("head",)
    assert stage.unfreeze_every == 1
    assert (stage.lr.base, stage.lr.decay) == (1e-3, 2.6)


def test_linear_probe_trains_only_heads_without_augmentation(registry):
    (stage,) = registry.recipe("linear-probe").stages
    assert stage.freeze == 2 and dict(stage.augment) == {}


def test_full_finetune_trains_every_layer(registry):
    (stage,) = registry.recipe("full-finetune").stages
    assert stage.freeze in (0, None) and stage.train is None


def test_every_builtin_recipe_is_listed(zoo):
    result = zoo("recipes")
    assert result.code == 0, result
    names = {line.split()[0] for line in result.out.splitlines()[1:]}
    assert {
        "multigriddet-full",
        "multigriddet-backbone",
        "lightweight-3stage",
        "ulmfit-gradual",
        "linear-probe",
        "full-finetune",
    } <= names


# --- zoo recipes NAME --------------------------------------------------------------------------------


def test_recipes_name_shows_the_stages_as_a_table(zoo):
    result = zoo("recipes", "multigriddet-full")
    assert result.code == 0, result
    assert "max lr 0.0001" in result.out.splitlines()[1]
    assert table_rows(result.out) == [
        ["#", "STAGE", "EPOCHS", "TRAINS", "LR", "SCHEDULE", "AUGMENT", "BN", "OTHER"],
        ["0", "heads", "5", "heads", "0.0001", "cosine", "-", "frozen", "drift ±20% warn"],
        ["1", "neck", "5", "all but backbone", "5e-05", "cosine", "mosaic=0.3, mixup=0.1", "frozen", "drift ±20% warn"],
        ["2", "all", "10", "all", "3e-05", "cosine", "mosaic=0.3, mixup=0.1", "frozen", "early stop val_loss/10"],
    ]


def test_recipes_name_shows_per_group_and_decayed_rates(zoo):
    lightweight = table_rows(zoo("recipes", "lightweight-3stage").out)
    assert [row[4] for row in lightweight[1:]] == [
        "head=0.002",
        "head=0.001, neck=0.0002",
        "head=0.0002, neck=0.0001, backbone=2e-05",
    ]
    ulmfit = table_rows(zoo("recipes", "ulmfit-gradual").out)
    assert ulmfit[1][3:5] == ["head, +1 group every 1 ep", "0.001 / 2.6^depth"]


def test_recipes_name_json_is_the_resolved_recipe(zoo):
    result = zoo("recipes", "multigriddet-full", "--json")
    data = json.loads(result.out)
    assert [(stage["epochs"], stage["freeze"], stage["lr"]) for stage in data["stages"]] == [
        (5, 2, 1e-4),
        (5, 1, 5e-5),
        (10, 0, 3e-5),
    ]
    assert data["origin"] == "registry.toml (built-in): recipes.multigriddet-full"


def test_unknown_recipe_suggests_the_closest(zoo):
    line = one_error_line(zoo("recipes", "linear-prob"))
    assert "unknown recipe 'linear-prob' - did you mean 'linear-probe'?" in line
    assert "run `zoo recipes` to list them" in line


def test_recipe_of_an_installed_third_party_plugin_is_shown(zoo, installed_packages, on_path):
    on_path(installed_packages(ROOT / "tests" / "plugin_package"))
    result = zoo("recipes", "acme-quick")
    assert result.code == 0, result
    assert table_rows(result.out)[1][:5] == ["0", "-", "1", "all but backbone", "0.001"]


# --- recipes registered by plugins ------------------------------------------------------------------


class RecipePlugin:
    name = "recipe-maker"

    @zoo_core.hookimpl
    def zoo_register_recipes(self, register):
        register(
            Recipe(
                name="probe-object",
                description="as an object",
                stages=[Stage(epochs=2, lr=LrSpec(value=1e-3), freeze=2)],
            )
        )
        register(
            {
                "name": "probe-mapping",
                "description": "as a mapping",
                "batch_size": 8,
                "stages": [
                    {"name": "first", "epochs": 1, "freeze": 2, "lr": 1e-3},
                    {"name": "second", "epochs": 1, "train": ["head"], "lr": {"head": 5e-4}},
                ],
            }
        )


class BadRecipePlugin:
    name = "bad-recipes"

    @zoo_core.hookimpl
    def zoo_register_recipes(self, register):
        register({"name": "broken", "stages": [{"epochs": 1, "lr": -1}]})


def test_plugin_registers_recipe_objects_and_mappings(make_registry):
    registry = make_registry(RecipePlugin())
    assert registry.recipe("probe-object").stages[0].freeze == 2
    mapped = registry.recipe("probe-mapping")
    assert [stage.name for stage in mapped.stages] == ["first", "second"]
    assert dict(mapped.stages[1].lr.per_group) == {"head": 5e-4}
    assert {"probe-object", "probe-mapping", "multigriddet-full"} <= set(registry.recipes)


def test_plugin_recipe_mapping_is_validated_with_a_key_path(make_registry):
    registry = make_registry(BadRecipePlugin())
    with pytest.raises(zoo_core.ZooError, match=re.escape("recipes.broken.stages[0].lr: must be > 0, got -1")):
        registry.recipe("broken")


def test_invalid_plugin_recipe_error_names_the_plugin(make_registry):
    registry = make_registry(BadRecipePlugin())
    with pytest.raises(zoo_core.ZooError) as caught:
        registry.recipe("broken")
    assert "bad-recipes" in str(caught.value)


def test_catalog_recipe_replaces_plugin_recipe_of_the_same_name(make_registry):
    Path("zoo.toml").write_text(
        '[recipes.probe-mapping]\ndescription = "mine"\n[[recipes.probe-mapping.stages]]\nepochs = 4\nlr = 1e-4\n'
    )
    recipe = make_registry(RecipePlugin()).recipe("probe-mapping")
    assert (recipe.description, recipe.stages[0].epochs) == ("mine", 4)
    assert str(recipe.origin) == "zoo.toml: recipes.probe-mapping"


def test_plugin_recipe_runs_every_stage(make_registry, data, tmp_path):
    from zoo_core.engine.api import finetune

    result = finetune(
        "probe-mapping",
        MODEL,
        data,
        run_dir=tmp_path / "run",
        pretrained=False,
        image_size=32,
        keep=("last", "best", "stages"),
        registry=make_registry(RecipePlugin()),
    )
    assert [(row["stage_name"], row["lr/head"]) for row in result.history] == [("first", 1e-3), ("second", 5e-4)]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("stage-*.pt")) == [
        "stage-0-first.pt",
        "stage-1-second.pt",
    ]


@pytest.mark.parametrize(
    "key, value",
    [("grad_clip", True), ("warmup_epochs", True), ("weight_decay", False), ("ema", True)],
)
def test_a_boolean_is_never_taken_for_a_number(key: str, value: bool) -> None:
    """``grad_clip = true`` once became max-norm 1: booleans are ints to Python, not to a recipe."""
    from zoo_core.specs import SpecValueError

    with pytest.raises(SpecValueError, match=rf"^{key}: .*got {value!r}"):
        Stage(epochs=1, lr=LrSpec(value=1e-3), **{key: value})


@pytest.mark.parametrize("key, value", [("momentum", True), ("label_smoothing", True), ("max_lr", True)])
def test_a_boolean_is_never_a_recipe_number(key: str, value: bool) -> None:
    from zoo_core.specs import SpecValueError

    with pytest.raises(SpecValueError, match=rf"^{key}: "):
        Recipe(name="r", stages=(Stage(epochs=1, lr=LrSpec(value=1e-5)),), **{key: value})


def test_a_boolean_in_a_catalog_is_one_line_naming_the_key(zoo) -> None:
    Path("zoo.toml").write_text('[recipes.r]\n[[recipes.r.stages]]\nepochs = 1\nlr = 1e-3\ngrad_clip = true\n')

    one_error_line(zoo("recipes", "r"), "zoo.toml: recipes.r.stages[0].grad_clip: must be > 0, got True")


def test_a_new_augmentation_of_a_task_counts_as_random_until_it_says_otherwise() -> None:
    """The feature cache needs deterministic inputs: a knob only listed in augment_keys must turn it off."""
    from zoo_classification.task import ClassificationTask

    class WithJitter(ClassificationTask):
        augment_keys = ClassificationTask.augment_keys | {"jitter"}

    task = WithJitter()

    assert not task.deterministic({"jitter": 0.4})
    assert task.deterministic({"mixup_alpha": 0.4})  # a setting of mixup, which is off
    assert not task.deterministic({"mixup": 0.1, "mixup_alpha": 0.4})


def test_finetune_prints_the_recipe_warnings_once_and_runs(zoo, data):
    write_project_recipe(stage_toml("epochs = 1\nlr = 1e-3"), recipe_keys="max_lr = 1e-4")
    result = zoo("finetune", "--recipe", "fast", "--model", MODEL, "--data", data, *FAST, "--run-dir", "run")
    assert result.code == 0, result
    assert result.err.count("exceeds the recipe's max_lr 0.0001") == 1
    assert Path("run/checkpoints/best.pt").is_file()


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("loss_scales = { box = 2.0 }", "recipe 'fast' stages[0].loss_scales.box: classification's one loss component is cls; scale that"),
        ('loss_norm = ["batch"]', "recipe 'fast' stages[0].loss_norm: classification's loss is already a mean over the batch"),
    ],
    ids=["unknown-component", "loss-norm"],
)
def test_classification_refuses_loss_settings_it_cannot_honour_and_writes_nothing(zoo, data, setting, expected):
    write_project_recipe(stage_toml(f"epochs = 1\nlr = 1e-3\n{setting}"))
    result = zoo("finetune", "--recipe", "fast", "--model", MODEL, "--data", data, *FAST, "--run-dir", "run")
    assert one_error_line(result).startswith(f"zoo: error: {expected}")
    assert not Path("run").exists()
