"""The plugin door (zoo_core/plugins.py): entry points, blocking, failures, duplicates, typos.

Built-in and third-party plugins load through the ``zoo`` entry-point group. Throwaway
plugins are registered on a fresh plugin manager per test (``make_registry``); plugins that
must arrive through a real entry point are written as a module plus a ``.dist-info`` folder
that ``importlib.metadata`` discovers on ``sys.path``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_error, declared_plugins

import zoo_core
from zoo_core import hookspecs
from zoo_core.errors import PluginError
from zoo_core.plugins import PluginHost, PluginStatus, load_plugins
from zoo_core.sources import IndexEntry
from zoo_core.specs import LrSpec, Recipe, ResolvedModel, Stage

BUILTINS = declared_plugins()
ACME = ROOT / "tests" / "plugin_package"
_unique = itertools.count()


def records(zoo) -> dict[str, dict]:
    result = zoo("plugins", "--json")
    assert result.code == 0, result
    return {record["name"]: record for record in json.loads(result.out)}


@pytest.fixture
def entry_point_plugin(tmp_path: Path, on_path) -> Callable[..., str]:
    """``entry_point_plugin(name, source)``: a module declared in the ``zoo`` entry-point group.

    Writes ``<module>.py`` and ``<dist>-<version>.dist-info`` (METADATA + entry_points.txt) into
    a folder put on ``sys.path``; returns the (unique) module name.
    """
    root = tmp_path / "site"
    root.mkdir(exist_ok=True)
    on_path(root)

    def make(
        name: str, source: str, *, dist: str | None = None, version: str = "0.1.0", value: str | None = None
    ) -> str:
        module = f"zoo_test_{re.sub(r'[^a-z0-9]', '_', name)}_{next(_unique)}"
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        dist = dist or f"zoo-test-{name}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[zoo]\n{name} = {value or module}\n")
        import importlib

        importlib.invalidate_caches()
        return module

    return make


class TinySource:
    """A light source for registration tests."""

    priority = None
    tagged = True
    revisioned = True
    description = "throwaway"

    def __init__(self, name: str = "mine") -> None:
        self.name = name

    def index_version(self) -> str | None:
        return f"{self.name}-1"

    def build_index(self) -> list[IndexEntry]:
        return [IndexEntry("net", ("v1",))]

    def resolve(self, ref, registry) -> ResolvedModel:
        return ResolvedModel(name=f"{self.name}:{ref.name}", source=self.name, architecture=ref.name, tag=ref.tag)

    def create(self, resolved, *, registry, weights_path, num_classes, **kwargs):
        import torch

        return torch.nn.Linear(4, num_classes or 2)


# --- built-ins go through the entry-point door ------------------------------------------------------------------


def test_builtin_plugins_are_declared_in_the_zoo_entry_point_group() -> None:
    declared = {ep.name: ep.value for ep in metadata.entry_points(group="zoo") if ep.dist and ep.dist.name == "zoo"}
    assert declared == BUILTINS


def test_every_builtin_plugin_loads_with_its_distribution() -> None:
    host = load_plugins()
    loaded = {record.name: record for record in host.loaded()}
    assert set(BUILTINS) <= set(loaded)
    for name, module in BUILTINS.items():
        assert loaded[name].module == module
        assert (loaded[name].distribution, loaded[name].version) == ("zoo", zoo_core.__version__)


REGISTERS_NOTHING = """
import importlib, sys
from zoo_core.sources import Source
from zoo_core.specs import FamilySpec, Recipe
for name in {modules!r}:
    importlib.import_module(name)
import zoo_core.registry
assert zoo_core.registry._default == {{}}, "a registry was built at import time"
registered = (Source, FamilySpec, Recipe)
def holds(value):
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple, set)) else [value]
    return any(isinstance(item, registered) for item in items)
found = [
    f"{{module}}.{{name}}"
    for module, loaded in list(sys.modules.items()) if module.split(".")[0].startswith("zoo")
    for name, value in vars(loaded).items() if not isinstance(value, type) and holds(value)
]
assert not found, found
"""


def test_importing_plugin_modules_registers_nothing() -> None:
    # every built-in plugin and the modules its registration hooks import: no module-level
    # table of sources, families or recipes may be filled as a side effect of importing them
    modules = sorted({*(module.split(":")[0] for module in BUILTINS.values()), "zoo_timm.source", "zoo_maxsight.family",
                      "zoo_torchvision.source", "zoo_hf.source", "zoo_file.source", "zoo_classification.task"})
    result = subprocess.run([sys.executable, "-c", REGISTERS_NOTHING.format(modules=modules)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_builtin_sources_remember_which_plugin_registered_them(registry) -> None:
    assert registry.source_names() == ["file", "hf-hub", "timm", "torchvision"]
    assert {name: registry.source_plugin(name) for name in registry.source_names()} == {
        "file": "file",
        "hf-hub": "hf-hub",
        "timm": "timm",
        "torchvision": "torchvision",
    }


def test_plugins_command_lists_each_plugin_with_status_distribution_and_hooks(zoo) -> None:
    result = zoo("plugins")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["PLUGIN", "STATUS", "DISTRIBUTION", "MODULE", "HOOKS", "/", "ERROR"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(BUILTINS) <= set(rows)
    assert rows["timm"].split()[:5] == ["timm", "loaded", "zoo", zoo_core.__version__, "zoo_timm"]
    assert "register_sources" in rows["timm"] and "layer_groups" in rows["timm"]


def test_plugins_json_records_the_hooks_each_plugin_implements(zoo) -> None:
    found = records(zoo)
    assert found["maxsight"]["hooks"] == [
        "zoo_layer_groups",
        "zoo_register_necks",
        "zoo_register_tiers",
        "zoo_transfer_rules",
    ]
    assert found["core"]["status"] == "loaded" and found["core"]["error"] is None


# --- the third-party package tests/plugin_package ----------------------------------------------------------------


@pytest.fixture
def acme(installed_packages, on_path) -> Path:
    target = installed_packages(ACME)
    on_path(target)
    return target


def test_third_party_plugin_is_found_through_its_entry_point(acme: Path, zoo) -> None:
    record = records(zoo)["acme"]
    assert record["status"] == "loaded"
    assert (record["distribution"], record["version"]) == ("zoo-acme", "1.2.0")
    assert record["module"] == "zoo_acme"
    assert record["hooks"] == [
        "zoo_register_heads",
        "zoo_register_recipes",
        "zoo_register_sources",
        "zoo_register_tiers",
    ]


def test_third_party_source_builds_a_model(acme: Path, make_registry) -> None:
    import torch

    registry = make_registry()
    assert registry.source_plugin("acme") == "acme"
    model = zoo_core.create_model("acme:tinynet", num_classes=4, registry=registry)
    assert type(model).__module__ == "zoo_acme.model"
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_third_party_source_names_are_listed(acme: Path, zoo) -> None:
    result = zoo("list", "tinynet", "--source", "acme")
    assert result.code == 0, result
    assert result.out.splitlines()[1].split() == ["acme:tinynet", "model"]


def test_third_party_head_is_registered_under_its_plugin(acme: Path, make_registry) -> None:
    import torch

    head = make_registry().factory("head", "acme-cosine")
    assert (head.plugin, head.description) == ("acme", "cosine-similarity classifier")
    module = head.load()(16, 3)
    assert type(module).__name__ == "CosineHead"
    assert module(torch.ones(2, 16)).shape == (2, 3)


def test_third_party_family_builds_a_tier_with_its_head(acme: Path, make_registry) -> None:
    import torch

    model = zoo_core.create_model("acme/small", num_classes=4, registry=make_registry())
    assert type(model.heads["classifier"]).__name__ == "CosineHead"
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_third_party_family_is_listed_by_zoo_tiers(acme: Path, zoo) -> None:
    result = zoo("tiers", "acme")
    assert result.code == 0, result
    rows = {line.split()[0]: line.split() for line in result.out.splitlines()[2:] if line.strip()}
    assert rows["acme/small"][:3] == ["acme/small", "1", "acme:tinynet"]
    assert rows["acme/large"][:3] == ["acme/large", "2", "timm:resnet10t"]


def test_third_party_recipe_is_usable(acme: Path, zoo, make_registry) -> None:
    recipe = make_registry().recipe("acme-quick")
    assert [(stage.epochs, stage.lr.value, stage.freeze) for stage in recipe.stages] == [(1, 1e-3, 1)]
    result = zoo("recipes", "acme-quick")
    assert result.code == 0, result
    assert result.out.startswith("acme-quick: one short stage")


# --- blocking -----------------------------------------------------------------------------------------------------------


def test_disable_plugins_blocks_each_named_plugin(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "maxsight, torchvision")
    found = records(zoo)
    assert found["maxsight"]["status"] == "blocked"
    assert found["torchvision"]["status"] == "blocked"
    assert found["timm"]["status"] == "loaded"


def test_blocked_plugins_contribute_nothing(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "maxsight,torchvision")
    assert_one_error(zoo("list", "--source", "torchvision"), "unknown source 'torchvision'")
    assert_one_error(zoo("tiers", "maxsight"), "unknown tier family 'maxsight'")
    assert "torchvision:" not in zoo("list", "resnet1*").out


def test_blocked_plugins_are_not_imported(monkeypatch: pytest.MonkeyPatch, entry_point_plugin) -> None:
    module = entry_point_plugin("noisy", "raise RuntimeError('imported although blocked')\n")
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "noisy")
    host = load_plugins()
    assert {r.name: r.status for r in host.records}["noisy"] is PluginStatus.BLOCKED
    assert module not in sys.modules


def test_third_party_plugin_can_be_blocked(acme: Path, zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "acme")
    assert records(zoo)["acme"]["status"] == "blocked"
    assert_one_error(zoo("recipes", "acme-quick"), "unknown recipe 'acme-quick'")


# --- plugins that fail to load ----------------------------------------------------------------------------------------------


BROKEN = "raise ImportError('zoo-test-broken needs libfoo, which is not installed')\n"


def test_plugin_that_fails_to_import_is_reported_with_its_error(entry_point_plugin, zoo) -> None:
    entry_point_plugin("broken", BROKEN)
    record = records(zoo)["broken"]
    assert record["status"] == "failed"
    assert record["error"] == "ImportError: zoo-test-broken needs libfoo, which is not installed"
    assert record["distribution"] == "zoo-test-broken"
    row = next(line for line in zoo("plugins").out.splitlines() if line.startswith("broken "))
    assert "failed" in row and "needs libfoo" in row


def test_everything_else_keeps_working_when_a_plugin_fails_to_import(entry_point_plugin, zoo) -> None:
    entry_point_plugin("broken", BROKEN)
    result = zoo("list", "resnet10t")
    assert result.code == 0, result
    assert "timm:resnet10t" in result.out
    assert "plugin 'broken' failed to load" in result.err
    assert zoo("tiers", "maxsight").code == 0


def test_entry_point_naming_a_missing_module_is_reported(entry_point_plugin, zoo) -> None:
    entry_point_plugin("ghost", "", value="zoo_test_no_such_module_anywhere")
    record = records(zoo)["ghost"]
    assert record["status"] == "failed"
    assert record["error"].startswith("ModuleNotFoundError: No module named 'zoo_test_no_such_module_anywhere'")


def test_hook_with_wrong_argument_names_is_refused_and_reported(entry_point_plugin, zoo, make_registry) -> None:
    entry_point_plugin(
        "badargs",
        """
        from zoo_core import hookimpl

        @hookimpl
        def zoo_register_sources(registrar):
            raise AssertionError("never called")
        """,
    )
    record = records(zoo)["badargs"]
    assert record["status"] == "failed"
    assert "registrar" in record["error"]
    assert make_registry().source_names() == ["file", "hf-hub", "timm", "torchvision"]


# --- misspelled hooks ---------------------------------------------------------------------------------------------------------


class Misspelled:
    name = "typo"

    @zoo_core.hookimpl
    def zoo_regster_sources(self, register):
        register(TinySource())


def test_misspelled_hook_is_an_error_with_a_suggestion(make_registry) -> None:
    with pytest.raises(PluginError) as caught:
        make_registry(Misspelled())
    assert str(caught.value) == (
        "plugin 'typo' implements unknown hook 'zoo_regster_sources' - did you mean 'zoo_register_sources'? "
        "Fix the plugin, or block it with ZOO_DISABLE_PLUGINS=typo"
    )


def test_misspelled_hook_in_an_installed_plugin_stops_commands_with_one_line(entry_point_plugin, zoo) -> None:
    entry_point_plugin(
        "typo",
        """
        from zoo_core import hookimpl

        @hookimpl
        def zoo_register_recipies(register):
            pass
        """,
    )
    assert_one_error(
        zoo("recipes"),
        "plugin 'typo' implements unknown hook 'zoo_register_recipies' - did you mean 'zoo_register_recipes'?",
    )


def test_plugins_command_still_lists_a_plugin_with_a_misspelled_hook(entry_point_plugin, zoo) -> None:
    entry_point_plugin(
        "typo", "from zoo_core import hookimpl\n\n@hookimpl\ndef zoo_layer_group(model, spec):\n    pass\n"
    )
    found = records(zoo)
    assert found["typo"]["status"] == "failed"
    assert "did you mean 'zoo_layer_groups'?" in found["typo"]["error"]
    assert found["timm"]["status"] == "loaded"


def test_blocking_a_plugin_with_a_misspelled_hook_restores_commands(
    entry_point_plugin, zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_point_plugin(
        "typo", "from zoo_core import hookimpl\n\n@hookimpl\ndef zoo_regster_heads(register):\n    pass\n"
    )
    assert zoo("recipes").code == 2
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "typo")
    assert zoo("recipes").code == 0


def test_non_hook_functions_in_a_plugin_are_ignored(make_registry) -> None:
    class Helpers:
        name = "helpers"

        def zoo_helper_not_a_hook(self):  # no @hookimpl marker: not a hook implementation
            return 1

    registry = make_registry(Helpers())
    record = next(record for record in registry.plugins.records if record.name == "helpers")
    assert (record.status, record.hooks) == (PluginStatus.LOADED, ())


# --- duplicates --------------------------------------------------------------------------------------------------------------


def source_plugin(name: str, *sources: TinySource):
    class Plugin:
        @zoo_core.hookimpl
        def zoo_register_sources(self, register):
            for source in sources:
                register(source)

    plugin = Plugin()
    plugin.name = name
    return plugin


def test_two_plugins_registering_one_source_name_is_an_error_naming_both(make_registry) -> None:
    with pytest.raises(PluginError) as caught:
        make_registry(source_plugin("alpha", TinySource("twin")), source_plugin("beta", TinySource("twin")))
    message = str(caught.value)
    assert message.startswith("source 'twin' is registered by both plugin '")
    assert "'alpha'" in message and "'beta'" in message
    assert "ZOO_DISABLE_PLUGINS=" in message


def test_a_plugin_reusing_a_builtin_source_name_is_an_error_naming_both(make_registry) -> None:
    with pytest.raises(PluginError) as caught:
        make_registry(source_plugin("impostor", TinySource("timm")))
    message = str(caught.value)
    assert message.startswith("source 'timm' is registered by both plugin '")
    assert "'timm'" in message.split(";")[0] and "'impostor'" in message


def test_one_plugin_registering_a_name_twice_is_an_error(make_registry) -> None:
    with pytest.raises(PluginError, match="source 'echo' is registered by both plugin 'stutter' and plugin 'stutter'"):
        make_registry(source_plugin("stutter", TinySource("echo"), TinySource("echo")))


def test_duplicate_family_from_an_installed_plugin_stops_zoo_tiers(entry_point_plugin, zoo) -> None:
    entry_point_plugin(
        "copycat",
        """
        from zoo_core import hookimpl

        @hookimpl
        def zoo_register_tiers(register):
            register({"name": "maxsight", "tiers": {"t1": {"rank": 1, "backbone": "timm:resnet10t"}}})
        """,
    )
    assert_one_error(zoo("tiers"), "tier family 'maxsight' is registered by both plugin", "'maxsight'", "'copycat'")


def test_duplicate_head_names_both_plugins(make_registry) -> None:
    class Heads:
        name = "more-heads"

        @zoo_core.hookimpl
        def zoo_register_heads(self, register):
            register("linear", "somewhere:else")

    with pytest.raises(
        PluginError,
        match=r"head 'linear' is registered by both plugin '(core|more-heads)' and plugin '(core|more-heads)'",
    ):
        make_registry(Heads()).heads  # noqa: B018


# --- each registration hook, through a throwaway plugin ----------------------------------------------------------------------------


def test_zoo_register_sources_adds_a_usable_source(make_registry) -> None:
    registry = make_registry(source_plugin("mine-plugin", TinySource("mine")))
    assert registry.source_plugin("mine") == "mine-plugin"
    assert registry.resolve("mine:net.v1").name == "mine:net"
    assert [row.name for row in registry.list_models(source="mine")] == ["mine:net"]


def test_a_source_lacking_the_source_methods_is_refused(make_registry) -> None:
    class Half:
        name = "half"

    with pytest.raises(
        PluginError, match="plugin 'halfhearted' registered source 'half' that lacks the Source methods"
    ):
        make_registry(source_plugin("halfhearted", Half()))


def test_registering_something_without_a_name_is_refused_naming_the_plugin(make_registry) -> None:
    with pytest.raises(PluginError, match="plugin 'nameless' registered an invalid source"):
        make_registry(source_plugin("nameless", object()))


def test_zoo_register_tiers_adds_a_resolvable_family(make_registry) -> None:
    class Tiers:
        name = "tiers-plugin"

        @zoo_core.hookimpl
        def zoo_register_tiers(self, register):
            register(
                {
                    "name": "pocket",
                    "description": "two pocket tiers",
                    "tiers": {
                        "s": {"rank": 1, "backbone": "timm:resnet10t"},
                        "m": {"rank": 2, "backbone": "timm:resnet14t", "heads": {"classifier": "mlp"}},
                    },
                }
            )

    registry = make_registry(Tiers())
    assert [tier.name for tier in registry.family("pocket").ordered()] == ["pocket/s", "pocket/m"]
    resolved = registry.resolve("pocket/m")
    assert (resolved.tier.backbone, resolved.tier.heads["classifier"].kind) == ("timm:resnet14t", "mlp")


def test_zoo_register_heads_adds_a_named_factory(make_registry) -> None:
    def doubling_head(in_features, out_features, **options):
        return ("built", in_features, out_features, options)

    class Heads:
        name = "heads-plugin"

        @zoo_core.hookimpl
        def zoo_register_heads(self, register):
            register("double", doubling_head, description="two of everything")

    head = make_registry(Heads()).factory("head", "double")
    assert (head.plugin, head.description) == ("heads-plugin", "two of everything")
    assert head.load()(8, 2, scale=3) == ("built", 8, 2, {"scale": 3})


def test_zoo_register_necks_adds_a_named_factory_loaded_lazily(make_registry) -> None:
    class Necks:
        name = "necks-plugin"

        @zoo_core.hookimpl
        def zoo_register_necks(self, register):
            register("later", "textwrap:dedent")

    registry = make_registry(Necks())
    neck = registry.factory("neck", "later")
    assert neck.target == "textwrap:dedent"
    assert neck.load() is textwrap.dedent
    assert "mlp" in registry.necks  # the built-in neck is still there


def test_a_head_factory_that_is_neither_callable_nor_an_import_string_is_refused(make_registry) -> None:
    class Heads:
        name = "bad-heads"

        @zoo_core.hookimpl
        def zoo_register_heads(self, register):
            register("broken", 42)

    with pytest.raises(PluginError, match="plugin 'bad-heads' registered an invalid head: factory for 'broken'"):
        make_registry(Heads()).heads  # noqa: B018


def test_zoo_register_tasks_adds_a_task_by_name(make_registry) -> None:
    class Segmentation:
        name = "segmentation"

    task = Segmentation()

    class Tasks:
        name = "tasks-plugin"

        @zoo_core.hookimpl
        def zoo_register_tasks(self, register):
            register(task)

    registry = make_registry(Tasks())
    assert registry.task("segmentation") is task
    assert registry.task("classification").name == "classification"


def test_zoo_register_recipes_adds_a_validated_recipe(make_registry) -> None:
    class Recipes:
        name = "recipes-plugin"

        @zoo_core.hookimpl
        def zoo_register_recipes(self, register):
            register({"name": "warm", "stages": [{"epochs": 2, "lr": {"head": 1e-3}, "train": ["head"]}]})
            register(Recipe(name="direct", stages=[Stage(epochs=1, lr=LrSpec(value=1e-4))]))

    registry = make_registry(Recipes())
    recipe = registry.recipe("warm")
    assert isinstance(recipe, Recipe)
    assert recipe.stages[0].train == ("head",)
    assert dict(recipe.stages[0].lr.per_group) == {"head": 1e-3}
    assert registry.recipe("direct").stages[0].lr.value == 1e-4


def test_an_invalid_plugin_recipe_names_the_plugin_and_the_key(make_registry) -> None:
    class Recipes:
        name = "sloppy"

        @zoo_core.hookimpl
        def zoo_register_recipes(self, register):
            register({"name": "oops", "stages": [{"epochs": 1, "lr": -1}]})

    with pytest.raises(zoo_core.ZooError) as caught:
        make_registry(Recipes()).recipes  # noqa: B018
    message = str(caught.value)
    assert "sloppy" in message
    assert "recipes.oops.stages[0].lr: must be > 0, got -1" in message


# --- model-knowledge hooks: plugins override Zoo's trylast built-ins -------------------------------------------------------------


def _tiny_timm_model():
    import timm

    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def test_zoo_layer_groups_from_a_plugin_overrides_the_builtin_timm_groups(make_registry) -> None:
    from zoo_core.groups import layer_groups

    model = _tiny_timm_model()
    head = [name for name, _ in model.named_parameters() if name.startswith("fc.")]
    trunk = [name for name, _ in model.named_parameters() if not name.startswith("fc.")]

    class TwoGroups:
        name = "two-groups"

        @zoo_core.hookimpl
        def zoo_layer_groups(self, model, spec, granularity):
            return [("trunk", "backbone", trunk), ("classifier", "head", head)]

    builtin = layer_groups(model, registry=make_registry())
    assert builtin.names() != ["trunk", "classifier"]
    groups = layer_groups(model, registry=make_registry(TwoGroups()))
    assert groups.names() == ["trunk", "classifier"]
    assert groups.group("classifier").params == tuple(head)


def test_zoo_layer_groups_returning_none_lets_the_builtin_answer(make_registry) -> None:
    from zoo_core.groups import layer_groups

    class Passes:
        name = "passes"

        @zoo_core.hookimpl
        def zoo_layer_groups(self, model, spec, granularity):
            return None

    model = _tiny_timm_model()
    assert (
        layer_groups(model, registry=make_registry(Passes())).names()
        == layer_groups(model, registry=make_registry()).names()
    )


def test_zoo_unfreeze_schedule_from_a_plugin_overrides_the_builtin_schedule(make_registry) -> None:
    from zoo_core.groups import layer_groups

    def everything_always(stage_index, epoch_in_stage):
        return frozenset({"everything"})

    class Schedule:
        name = "my-schedule"

        @zoo_core.hookimpl
        def zoo_unfreeze_schedule(self, recipe, groups):
            return everything_always

    model = _tiny_timm_model()
    builtin_registry = make_registry()
    recipe = builtin_registry.recipe("linear-probe")
    groups = layer_groups(model, registry=builtin_registry)
    builtin = builtin_registry.plugins.hook.zoo_unfreeze_schedule(recipe=recipe, groups=groups)
    assert builtin(0, 0) == frozenset(g.name for g in groups if g.role.value == "head")
    registry = make_registry(Schedule())
    assert registry.plugins.hook.zoo_unfreeze_schedule(recipe=recipe, groups=groups) is everything_always


def test_zoo_transfer_rules_from_a_plugin_shape_the_transfer_plan(make_registry, tiny_checkpoint) -> None:
    from zoo_core.plans import plan_transfer
    from zoo_core.specs import TransferRules

    seen = []

    class KeepHeadNew:
        name = "keep-head-new"

        @zoo_core.hookimpl
        def zoo_transfer_rules(self, source, target):
            seen.append(target.name)
            return TransferRules(exclude=(r"^fc\.",))

    checkpoint = tiny_checkpoint(arch="resnet10t", num_classes=5)
    plain = plan_transfer(checkpoint, "timm:resnet10t", num_classes=5, registry=make_registry())
    assert {e.action.value for e in plain.entries if e.target.startswith("fc.")} == {"copy"}

    plan = plan_transfer(checkpoint, "timm:resnet10t", num_classes=5, registry=make_registry(KeepHeadNew()))
    assert seen and seen[0].startswith("timm:resnet10t")
    assert {e.action.value for e in plan.entries if e.target.startswith("fc.")} == {"new"}
    assert {u.source: u.reason.value for u in plan.unused} == {"fc.weight": "excluded", "fc.bias": "excluded"}


# --- listing stays light --------------------------------------------------------------------------------------------------------------

LIGHT_CHECK = """
import sys, io, contextlib
from zoo_core.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main({argv!r})
assert code == 0, code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision", "huggingface_hub", "safetensors"))
assert not heavy, heavy
print(out.getvalue())
"""


def run_light(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK.format(argv=argv)], capture_output=True, text=True, timeout=120, check=False
    )


def test_listing_plugins_imports_no_torch_although_it_runs_every_registration_hook() -> None:
    # `zoo plugins` calls the registration hooks (to report one that raises); hook modules and what
    # they import to register stay light, as the hookspecs require
    result = run_light(["plugins"])
    assert result.returncode == 0, result.stderr
    assert "timm" in result.stdout and "loaded" in result.stdout


def test_zoo_list_imports_no_torch() -> None:
    result = run_light(["list", "resnet1*"])
    assert result.returncode == 0, result.stderr
    assert "timm:resnet18" in result.stdout and "torchvision:resnet18" in result.stdout


def test_listing_a_third_party_plugin_does_not_import_its_heavy_modules(acme: Path) -> None:
    script = LIGHT_CHECK.format(argv=["plugins"]) + "assert 'zoo_acme.model' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "zoo-acme" in result.stdout


# --- meta-tests: every hookspec is documented and has a test ----------------------------------------------------------------------------


@pytest.mark.parametrize("hook_name", hookspecs.hook_names())
def test_every_hookspec_is_documented(hook_name: str) -> None:
    function = getattr(hookspecs, hook_name)
    doc = inspect.getdoc(function) or ""
    summary = doc.split("\n", 1)[0].strip()
    assert summary and summary.endswith("."), f"{hook_name}: the docstring needs a one-line summary"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{hook_name}: document ':param {parameter}:'"
    assert ":return:" in doc, f"{hook_name}: say what the return value means with ':return:'"
    if function.zoo_spec["firstresult"]:
        assert "Stops at first non-None result" in doc, f"{hook_name}: say 'Stops at first non-None result'"


def _hooks_exercised_by_tests() -> set[str]:
    """Hook names that test code implements (a ``def zoo_…``) or calls (``hook.zoo_…(``); read
    from the syntax tree, so a mention in a comment or a string counts for nothing."""
    found: set[str] = set()
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("zoo_"):
                found.add(node.name)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("zoo_"):
                found.add(node.func.attr)
    return found


def test_every_hook_is_implemented_or_called_by_a_test() -> None:
    untested = [name for name in hookspecs.hook_names() if name not in _hooks_exercised_by_tests()]
    assert not untested, f"hooks without a test: {untested}"


def test_the_hook_census_ignores_comments_and_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zoo_classifier in a comment, "zoo_reset_classifier" in a string: neither is a test of the hook
    assert "zoo_not_a_hook" not in _hooks_exercised_by_tests()
    (tmp_path / "test_fake.py").write_text("# zoo_fake_hook\nx = 'zoo_other_hook'\ndef zoo_real_hook():\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "__file__", str(tmp_path / "test_plugins.py"))
    assert _hooks_exercised_by_tests() == {"zoo_real_hook"}


def test_hook_names_are_every_zoo_hookspec_and_nothing_else() -> None:
    host = PluginHost()
    specs = sorted(name for name in dir(host.manager.hook) if name.startswith("zoo_"))
    assert specs == sorted(hookspecs.hook_names())
    assert all(getattr(host.manager.hook, name).spec is not None for name in specs)


def test_every_class_a_hookspec_cites_exists() -> None:
    import importlib

    cited = set(re.findall(r":class:`(zoo_core\.[\w.]+)`", inspect.getsource(hookspecs)))
    missing = []
    for dotted in sorted(cited):
        module_name, _, name = dotted.rpartition(".")
        if not hasattr(importlib.import_module(module_name), name):
            missing.append(dotted)
    assert cited and not missing, missing
