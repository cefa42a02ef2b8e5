"""Layered catalogs: built-in < $ZOO_HOME/registry.toml < ./zoo.toml < --registry FILE.

Later layers replace entries of the same name, every entry remembers the file and key it came
from, and every validation error names the file and the key path.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import assert_one_error
from conftest import folder_snapshot as snapshot

from zoo_core.catalog import load_catalog
from zoo_core.errors import CatalogError
from zoo_core.registry import Registry

BUILTIN = "registry.toml (built-in)"
SHA = "ab" * 32


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def user_catalog() -> Path:
    return Path(os.environ["ZOO_HOME"]) / "registry.toml"


FAST_RECIPE = """
    [recipes.fast]
    description = "{description}"
    [[recipes.fast.stages]]
    epochs = 1
    lr = 1e-3
"""


# --- layering -------------------------------------------------------------------------------------------


def test_builtin_catalog_declares_aliases_families_and_recipes() -> None:
    catalog = load_catalog()
    assert catalog.aliases["resnet50-a1"].target == "timm:resnet50.a1_in1k"
    assert set(catalog.families["lite"].tiers) == {"t1", "t2", "t3"}
    assert [stage.name for stage in catalog.recipes["multigriddet-full"].stages] == ["heads", "neck", "all"]
    assert [layer.label for layer in catalog.layers] == [BUILTIN]


def test_builtin_entries_remember_their_file_and_key() -> None:
    catalog = load_catalog()
    assert str(catalog.aliases["resnet50-a1"].origin) == f"{BUILTIN}: aliases.resnet50-a1"
    assert str(catalog.families["lite"].tiers["t2"].origin) == f"{BUILTIN}: families.lite.tiers.t2"
    assert str(catalog.recipes["linear-probe"].origin) == f"{BUILTIN}: recipes.linear-probe"


def test_user_catalog_in_zoo_home_replaces_builtin_entries() -> None:
    write(user_catalog(), '[aliases]\nresnet50-a1 = "timm:resnet10t"\n')
    alias = load_catalog().aliases["resnet50-a1"]
    assert alias.target == "timm:resnet10t"
    assert alias.origin.file == str(user_catalog())
    assert alias.origin.key == "aliases.resnet50-a1"


def test_project_zoo_toml_replaces_user_catalog_entries(isolated: Path) -> None:
    write(user_catalog(), '[aliases]\nfast = "timm:resnet10t"\n')
    write(isolated / "zoo.toml", '[aliases]\nfast = "timm:resnet14t"\n')
    alias = load_catalog().aliases["fast"]
    assert alias.target == "timm:resnet14t"
    assert str(alias.origin) == "zoo.toml: aliases.fast"


def test_registry_file_replaces_project_entries(isolated: Path) -> None:
    write(isolated / "zoo.toml", '[aliases]\nfast = "timm:resnet14t"\n')
    extra = write(isolated / "extra.toml", '[aliases]\nfast = "timm:resnet26t"\n')
    alias = load_catalog([extra]).aliases["fast"]
    assert alias.target == "timm:resnet26t"
    assert str(alias.origin) == "extra.toml: aliases.fast"


def test_later_registry_files_replace_earlier_ones(isolated: Path) -> None:
    first = write(isolated / "a.toml", '[aliases]\nfast = "timm:resnet14t"\n')
    second = write(isolated / "b.toml", '[aliases]\nfast = "timm:resnet26t"\n')
    assert load_catalog([first, second]).aliases["fast"].target == "timm:resnet26t"
    assert load_catalog([second, first]).aliases["fast"].target == "timm:resnet14t"


def test_layers_are_kept_in_precedence_order(isolated: Path) -> None:
    write(user_catalog(), '[aliases]\nu = "timm:resnet10t"\n')
    write(isolated / "zoo.toml", '[aliases]\np = "timm:resnet10t"\n')
    extra = write(isolated / "extra.toml", '[aliases]\ne = "timm:resnet10t"\n')
    labels = [layer.label for layer in load_catalog([extra]).layers]
    assert labels == [BUILTIN, str(user_catalog()), "zoo.toml", "extra.toml"]


def test_entries_a_later_layer_does_not_mention_keep_their_origin(isolated: Path) -> None:
    write(isolated / "zoo.toml", '[aliases]\nresnet50-a1 = "timm:resnet10t"\n')
    catalog = load_catalog()
    assert catalog.aliases["resnet50-a1"].origin.file == "zoo.toml"
    assert catalog.aliases["convnext-tiny"].origin.file == BUILTIN
    assert catalog.recipes["multigriddet-full"].origin.file == BUILTIN


def test_a_later_layer_replaces_a_whole_recipe_not_single_keys(isolated: Path) -> None:
    write(
        isolated / "zoo.toml",
        """
        [recipes.linear-probe]
        [[recipes.linear-probe.stages]]
        epochs = 2
        lr = 5e-3
        """,
    )
    recipe = load_catalog().recipes["linear-probe"]
    assert [(stage.epochs, stage.lr.value, stage.freeze) for stage in recipe.stages] == [(2, 5e-3, None)]
    assert recipe.description == ""  # the built-in description is not merged in
    assert str(recipe.origin) == "zoo.toml: recipes.linear-probe"


def test_a_catalog_family_replaces_a_plugin_family_of_the_same_name(isolated: Path, registry: Registry) -> None:
    assert registry.family("maxsight").origin.file.startswith("plugin")
    write(
        isolated / "zoo.toml",
        """
        [families.maxsight.tiers.t1]
        rank = 1
        backbone = "timm:resnet10t"
        """,
    )
    family = Registry.load().family("maxsight")
    assert set(family.tiers) == {"t1"}
    assert str(family.origin) == "zoo.toml: families.maxsight"


def test_a_catalog_recipe_replaces_a_plugin_recipe_of_the_same_name(isolated: Path, make_registry) -> None:
    import zoo_core

    class Recipes:
        @zoo_core.hookimpl
        def zoo_register_recipes(self, register):
            register({"name": "fast", "description": "from the plugin", "stages": [{"epochs": 1, "lr": 1e-3}]})

    assert make_registry(Recipes()).recipe("fast").description == "from the plugin"
    write(isolated / "zoo.toml", FAST_RECIPE.format(description="from zoo.toml"))
    assert make_registry(Recipes()).recipe("fast").description == "from zoo.toml"


def test_registry_option_layers_a_file_on_top_for_one_command(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", FAST_RECIPE.format(description="project"))
    write(isolated / "extra.toml", FAST_RECIPE.format(description="extra file"))
    result = zoo("--registry", "extra.toml", "recipes", "fast")
    assert result.code == 0, result
    assert result.out.splitlines()[0] == "fast: extra file  (extra.toml: recipes.fast)"
    assert zoo("recipes", "fast").out.splitlines()[0] == "fast: project  (zoo.toml: recipes.fast)"


def test_zoo_registry_environment_variable_layers_files_on_top(
    isolated: Path, zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "zoo.toml", FAST_RECIPE.format(description="project"))
    write(isolated / "env.toml", FAST_RECIPE.format(description="from the environment"))
    monkeypatch.setenv("ZOO_REGISTRY", str(isolated / "env.toml"))
    result = zoo("recipes", "fast", "--json")
    assert result.code == 0, result
    assert '"description": "from the environment"' in result.out


def test_zoo_tiers_shows_where_each_family_came_from(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[families.mine.tiers.small]\nrank = 1\nbackbone = "timm:resnet10t"\n')
    rows = {line.split()[0]: line for line in zoo("tiers").out.splitlines()[1:]}
    assert "zoo.toml: families.mine" in rows["mine"]
    assert f"{BUILTIN}: families.lite" in rows["lite"]
    assert "plugin" in rows["maxsight"]


# --- aliases with weights pins ----------------------------------------------------------------------------


def test_alias_with_weights_pin_resolves_to_the_pinned_file(isolated: Path) -> None:
    write(
        isolated / "zoo.toml",
        f"""
        [aliases.fast]
        target = "timm:resnet10t"
        weights = {{ url = "https://example.org/models/fast-v2.safetensors", sha256 = "{SHA}" }}
        num_classes = 3
        class_names = ["cat", "dog", "eel"]
        description = "our fine-tuned resnet10t"
        """,
    )
    resolved = Registry.load().resolve("fast")
    assert resolved.architecture == "resnet10t"
    assert resolved.weights.url == "https://example.org/models/fast-v2.safetensors"
    assert resolved.weights.sha256 == SHA
    assert resolved.weights.filename == "fast-v2.safetensors"
    assert resolved.num_classes == 3
    assert resolved.class_names == ("cat", "dog", "eel")
    assert resolved.via == "alias 'fast' (zoo.toml: aliases.fast)"


def test_alias_pin_filename_overrides_the_url_basename(isolated: Path) -> None:
    write(
        isolated / "zoo.toml",
        f"""
        [aliases.fast]
        target = "timm:resnet10t"
        weights = {{ url = "https://example.org/download?id=7", sha256 = "{SHA}", filename = "fast.pt" }}
        """,
    )
    assert Registry.load().resolve("fast").weights.filename == "fast.pt"


def test_plain_alias_keeps_the_targets_weights(isolated: Path) -> None:
    write(isolated / "zoo.toml", '[aliases]\nfast = "timm:resnet10t.c3_in1k"\n')
    resolved = Registry.load().resolve("fast")
    assert resolved.name == "timm:resnet10t.c3_in1k"
    assert resolved.weights.repo_id == "timm/resnet10t.c3_in1k"
    assert resolved.requested == "fast"


# --- validation: file + key path ------------------------------------------------------------------------------


def test_negative_stage_lr_names_file_and_key_path(isolated: Path, zoo) -> None:
    write(
        isolated / "zoo.toml",
        """
        [recipes.fast]
        [[recipes.fast.stages]]
        epochs = 1
        lr = 1e-3
        [[recipes.fast.stages]]
        epochs = 1
        lr = -1
        """,
    )
    line = assert_one_error(zoo("recipes"))
    assert line == "zoo: error: zoo.toml: recipes.fast.stages[1].lr: must be > 0, got -1"


def test_alias_to_unknown_source_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[aliases]\nfast = "timn:resnet18"\n')
    assert_one_error(zoo("list"), "zoo.toml: aliases.fast: unknown source 'timn' - did you mean 'timm'?")


def test_unknown_stage_key_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", "[recipes.fast]\n[[recipes.fast.stages]]\nepoch = 1\nlr = 1e-3\n")
    assert_one_error(zoo("recipes"), "zoo.toml: recipes.fast.stages[0].epoch: unknown key - did you mean 'epochs'?")


def test_unknown_section_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[aliasses]\nfast = "timm:resnet18"\n')
    assert_one_error(
        zoo("list"), "zoo.toml: aliasses: unknown key - did you mean 'aliases'?", "allowed: aliases, families, recipes"
    )


def test_unknown_alias_key_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", f'[aliases.fast]\ntarget = "timm:resnet10t"\nwieghts = {{ sha256 = "{SHA}" }}\n')
    assert_one_error(zoo("list"), "zoo.toml: aliases.fast.wieghts: unknown key - did you mean 'weights'?")


def test_unknown_tier_key_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[families.mine.tiers.t1]\nrank = 1\nbakbone = "timm:resnet10t"\n')
    assert_one_error(zoo("tiers"), "zoo.toml: families.mine.tiers.t1.bakbone: unknown key - did you mean 'backbone'?")


def test_invalid_toml_names_the_file_and_the_position(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[aliases\nfast = "timm:resnet18"\n')
    assert_one_error(zoo("list"), "zoo.toml: not valid TOML", "line 1")


def test_missing_registry_file_is_named(zoo) -> None:
    assert_one_error(zoo("--registry", "nowhere.toml", "list"), "nowhere.toml: no such catalog file")


def test_errors_in_the_user_catalog_name_its_full_path(zoo) -> None:
    write(user_catalog(), "[aliases]\nfast = 3\n")
    assert_one_error(zoo("list"), f"{user_catalog()}: aliases.fast: must be a table, got int 3")


def test_errors_in_a_registry_file_name_that_file(isolated: Path, zoo) -> None:
    write(isolated / "extra.toml", "[recipes.fast]\n[[recipes.fast.stages]]\nepochs = 0\nlr = 1e-3\n")
    assert_one_error(
        zoo("--registry", "extra.toml", "recipes"),
        "extra.toml: recipes.fast.stages[0].epochs: must be a whole number > 0, got 0",
    )


def test_a_bad_catalog_writes_and_changes_nothing(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", "[recipes.fast]\n[[recipes.fast.stages]]\nepochs = 1\nlr = -1\n")
    home = Path(os.environ["ZOO_HOME"])
    before = snapshot(isolated, home)
    assert_one_error(zoo("list", "resnet1*"))
    assert snapshot(isolated, home) == before


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('aliases = "x"', "zoo.toml: aliases: must be a table, got str 'x'"),
        ('[aliases.fast]\nweights = { sha256 = "' + SHA + '" }', "zoo.toml: aliases.fast.target: is required"),
        (
            '[aliases.fast]\ntarget = "timm:resnet10t"\nweights = { sha256 = "XYZ" }',
            "zoo.toml: aliases.fast.weights.sha256: must be 64 lowercase hex digits, got 'XYZ'",
        ),
        (
            '[aliases.fast]\ntarget = "timm:resnet10t"\nweights = {}',
            "zoo.toml: aliases.fast.weights: give at least 'url' or 'sha256'",
        ),
        (
            '[aliases.fast]\ntarget = "timm:resnet10t"\nnum_classes = 0',
            "zoo.toml: aliases.fast.num_classes: must be a whole number > 0, got 0",
        ),
        (
            '[aliases.fast]\ntarget = "timm:resnet10t"\nclass_names = "cat"',
            "zoo.toml: aliases.fast.class_names: must be a list of strings",
        ),
    ],
    ids=[
        "section-not-table",
        "alias-without-target",
        "bad-sha256",
        "empty-pin",
        "zero-classes",
        "class-names-not-list",
    ],
)
def test_malformed_alias_entries_name_file_and_key(isolated: Path, zoo, toml: str, message: str) -> None:
    write(isolated / "zoo.toml", toml + "\n")
    assert_one_error(zoo("list"), message)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[families.mine]\ndescription = "x"', "zoo.toml: families.mine.tiers: a family needs at least one tier"),
        ('[families.mine.tiers.t1]\nbackbone = "timm:resnet10t"', "zoo.toml: families.mine.tiers.t1.rank: is required"),
        ("[families.mine.tiers.t1]\nrank = 1", "zoo.toml: families.mine.tiers.t1.backbone: is required"),
        (
            '[families.mine.tiers.t1]\nrank = -1\nbackbone = "timm:resnet10t"',
            "zoo.toml: families.mine.tiers.t1.rank: must be >= 0, got -1",
        ),
        (
            '[families.mine]\nbuilder = "not an import string"\n[families.mine.tiers.t1]\nrank = 1\nbackbone = "timm:resnet10t"',
            "zoo.toml: families.mine.builder: must be an import string",
        ),
        (
            '[families.mine.rules]\nexclude = ["(("]\n[families.mine.tiers.t1]\nrank = 1\nbackbone = "timm:resnet10t"',
            "zoo.toml: families.mine.rules.exclude[0]: bad regex '(('",
        ),
        (
            '[families.mine.rules]\nshape = "stretch"\n[families.mine.tiers.t1]\nrank = 1\nbackbone = "timm:resnet10t"',
            "zoo.toml: families.mine.rules.shape: must be one of 'skip', 'adapt', got 'stretch'",
        ),
        (
            '[families.mine.tiers.t1]\nrank = 1\nbackbone = "timm:resnet10t"\nheads = {}',
            "zoo.toml: families.mine.tiers.t1.heads: a tier needs at least one head",
        ),
    ],
    ids=[
        "no-tiers",
        "no-rank",
        "no-backbone",
        "negative-rank",
        "bad-builder",
        "bad-regex",
        "bad-shape-policy",
        "no-heads",
    ],
)
def test_malformed_family_entries_name_file_and_key(isolated: Path, zoo, toml: str, message: str) -> None:
    write(isolated / "zoo.toml", toml + "\n")
    assert_one_error(zoo("tiers"), message)


def test_tier_backbone_with_unknown_source_suggests_the_close_one(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[families.mine.tiers.t1]\nrank = 1\nbackbone = "timn:resnet10t"\n')
    assert_one_error(
        zoo("tiers"), "zoo.toml: families.mine.tiers.t1.backbone: unknown source 'timn' - did you mean 'timm'?"
    )


STAGE = "[recipes.fast]\n{recipe}\n[[recipes.fast.stages]]\nepochs = 2\n{stage}\n"


@pytest.mark.parametrize(
    ("recipe", "stage", "message"),
    [
        ("", "lr = { head = 0 }", "zoo.toml: recipes.fast.stages[0].lr.head: must be > 0, got 0"),
        (
            "",
            "freeze = 3",
            "zoo.toml: recipes.fast.stages[0].freeze: must be 0 (none), 1 (backbone) or 2 (all but heads), got 3",
        ),
        (
            "",
            'schedule = "cosin"',
            "zoo.toml: recipes.fast.stages[0].schedule: must be one of 'cosine', 'constant', 'linear', 'cosine_restarts', got 'cosin'",
        ),
        ("", 'bn = "frozn"', "zoo.toml: recipes.fast.stages[0].bn: must be one of"),
        ("", "ema = 1.0", "zoo.toml: recipes.fast.stages[0].ema: is the EMA decay and must be between 0 and 1"),
        ("", "warmup_epochs = 5", "zoo.toml: recipes.fast.stages[0].warmup_epochs: must not exceed epochs (2), got 5"),
        (
            "",
            'freeze = 1\ntrain = ["head"]',
            "zoo.toml: recipes.fast.stages[0].train: give either 'freeze' (a level) or 'train' (groups), not both",
        ),
        ("", "train = [1]", "zoo.toml: recipes.fast.stages[0].train: must be a list of group names or roles"),
        (
            "",
            'drift_guard = { band = 0.2, action = "panic" }',
            "zoo.toml: recipes.fast.stages[0].drift_guard.action: must be one of 'warn', 'stop', got 'panic'",
        ),
        (
            "",
            "early_stop = { patience = 0 }",
            "zoo.toml: recipes.fast.stages[0].early_stop.patience: must be a whole number > 0, got 0",
        ),
        ("", 'early_stop = { mode = "minn" }', "zoo.toml: recipes.fast.stages[0].early_stop.mode:"),
        (
            "",
            "lr = { base = 1e-3, decay = 0.5 }",
            "zoo.toml: recipes.fast.stages[0].lr.decay: divides the rate per group and must be >= 1, got 0.5",
        ),
        ("", "loss_scales = { box = -1 }", "zoo.toml: recipes.fast.stages[0].loss_scales.box: must be >= 0, got -1"),
        ('optimizer = "adamm"', "", "zoo.toml: recipes.fast.optimizer: must be one of 'adamw', 'sgd', got 'adamm'"),
        ("momentum = 1.5", "", "zoo.toml: recipes.fast.momentum: must be between 0 and 1, got 1.5"),
        ('granularity = "medium"', "", "zoo.toml: recipes.fast.granularity:"),
        ('seed = "lucky"', "", "zoo.toml: recipes.fast.seed:"),
    ],
    ids=[
        "zero-group-lr",
        "freeze-level-3",
        "unknown-schedule",
        "unknown-bn-mode",
        "ema-not-a-decay",
        "warmup-longer-than-stage",
        "freeze-and-train",
        "train-not-names",
        "unknown-drift-action",
        "zero-patience",
        "unknown-early-stop-mode",
        "lr-decay-below-1",
        "negative-loss-scale",
        "unknown-optimizer",
        "momentum-above-1",
        "unknown-granularity",
        "seed-not-a-number",
    ],
)
def test_malformed_recipe_entries_name_file_and_key(isolated: Path, zoo, recipe: str, stage: str, message: str) -> None:
    if not stage.startswith("lr ="):
        stage = f"lr = 1e-3\n{stage}"
    write(isolated / "zoo.toml", STAGE.format(recipe=recipe, stage=stage))
    assert_one_error(zoo("recipes"), message)


def test_non_numeric_epochs_are_refused(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[recipes.fast]\n[[recipes.fast.stages]]\nepochs = "ten"\nlr = 1e-3\n')
    assert_one_error(zoo("recipes"), "zoo.toml: recipes.fast.stages[0].epochs: must be a whole number > 0, got 'ten'")


def test_recipe_without_stages_is_refused(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", '[recipes.fast]\ndescription = "nothing to do"\n')
    assert_one_error(zoo("recipes"), "zoo.toml: recipes.fast.stages: is required: a list of [[stages]] tables")


def test_stage_without_lr_is_refused(isolated: Path, zoo) -> None:
    write(isolated / "zoo.toml", "[recipes.fast]\n[[recipes.fast.stages]]\nepochs = 1\n")
    assert_one_error(zoo("recipes"), "zoo.toml: recipes.fast.stages[0].lr: is required")


def test_catalog_errors_are_typed_for_the_python_api(isolated: Path) -> None:
    write(isolated / "zoo.toml", "[recipes.fast]\n[[recipes.fast.stages]]\nepochs = 1\nlr = -1\n")
    with pytest.raises(CatalogError, match=r"^zoo\.toml: recipes\.fast\.stages\[0\]\.lr: must be > 0, got -1$"):
        load_catalog()
