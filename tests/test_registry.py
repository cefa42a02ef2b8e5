"""The Registry: bare-name resolution order, aliases, tiers, suggestions and listing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import zoo_core
from zoo_core.errors import CatalogError, UnknownNameError
from zoo_core.registry import Registry
from zoo_core.sources import IndexEntry
from zoo_core.specs import ResolvedModel


def write_project_catalog(folder: Path, text: str) -> None:
    (folder / "zoo.toml").write_text(textwrap.dedent(text))


class ListedSource:
    """A light source that lists a fixed set of names, for resolution-order tests."""

    tagged = True
    revisioned = True
    description = "test source"

    def __init__(self, name: str, priority: int | None, names: tuple[str, ...]) -> None:
        self.name, self.priority, self._names = name, priority, names

    def index_version(self) -> str | None:
        return f"{self.name}-1"

    def build_index(self) -> list[IndexEntry]:
        return [IndexEntry(name) for name in self._names]

    def resolve(self, ref, registry) -> ResolvedModel:
        return ResolvedModel(name=f"{self.name}:{ref.name}", source=self.name, architecture=ref.name)

    def create(self, resolved, *, registry, weights_path, num_classes, **kwargs):
        raise NotImplementedError


class SourcePlugin:
    def __init__(self, *sources: ListedSource) -> None:
        self.sources = sources
        self.name = "sources-" + "-".join(source.name for source in sources)

    @zoo_core.hookimpl
    def zoo_register_sources(self, register) -> None:
        for source in self.sources:
            register(source)


# --- the order for bare names -----------------------------------------------------------------------------


def test_bare_name_found_in_several_sources_goes_to_the_lowest_priority_number(registry: Registry) -> None:
    # resnet18 is both a timm architecture (priority 10) and a torchvision builder (priority 20)
    assert registry.resolve("resnet18").source == "timm"
    assert registry.resolve("torchvision:resnet18").source == "torchvision"


def test_bare_name_only_one_source_knows_resolves_there(registry: Registry) -> None:
    resolved = registry.resolve("regnet_x_400mf")
    assert resolved.source == "torchvision"
    assert resolved.requested == "regnet_x_400mf"
    assert resolved.via == "source torchvision"


def test_a_source_with_a_lower_priority_number_wins_bare_names(make_registry) -> None:
    registry = make_registry(SourcePlugin(ListedSource("early", 5, ("resnet18",))))
    assert registry.resolve("resnet18").source == "early"


def test_a_source_with_a_higher_priority_number_loses_bare_names(make_registry) -> None:
    registry = make_registry(SourcePlugin(ListedSource("late", 90, ("resnet18", "only_late"))))
    assert registry.resolve("resnet18").source == "timm"
    assert registry.resolve("only_late").source == "late"


def test_sources_without_priority_are_reachable_only_with_a_prefix(make_registry) -> None:
    registry = make_registry(SourcePlugin(ListedSource("hidden", None, ("secret_net",))))
    assert registry.resolve("hidden:secret_net").name == "hidden:secret_net"
    with pytest.raises(UnknownNameError, match="unknown model 'secret_net'"):
        registry.resolve("secret_net")


def test_equal_priorities_are_broken_by_source_name(make_registry) -> None:
    registry = make_registry(SourcePlugin(ListedSource("zeta", 1, ("twin",)), ListedSource("alpha", 1, ("twin",))))
    assert registry.resolve("twin").source == "alpha"


def test_alias_wins_over_every_source(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nresnet18 = "torchvision:resnet18"\n')
    resolved = Registry.load().resolve("resnet18")
    assert resolved.source == "torchvision"
    assert resolved.via == "alias 'resnet18' (zoo.toml: aliases.resnet18)"


def test_alias_wins_over_a_tier_of_the_same_name(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\n"maxsight/t1" = "timm:resnet14t"\n')
    assert Registry.load().resolve("maxsight/t1").architecture == "resnet14t"


def test_tier_wins_over_a_source_listing_the_same_name(make_registry) -> None:
    registry = make_registry(SourcePlugin(ListedSource("greedy", 1, ("maxsight/t1",))))
    resolved = registry.resolve("maxsight/t1")
    assert resolved.source == "tier"
    assert resolved.tier.family == "maxsight"


def test_existing_weights_file_resolves_through_the_file_source(isolated: Path, registry: Registry) -> None:
    import torch

    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "provenance": {"model": "timm:resnet10t"}}, "best.pt")
    resolved = registry.resolve("best.pt")
    assert resolved.source == "file"
    assert resolved.name == f"file:{(isolated / 'best.pt').resolve()}"
    assert resolved.architecture.startswith("timm:resnet10t")  # the model named in its provenance


def test_weights_file_that_does_not_exist_is_an_unknown_name(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'missing.pt'"):
        registry.resolve("missing.pt")


def test_source_prefix_skips_aliases_and_tiers(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nresnet18 = "torchvision:resnet18"\n')
    assert Registry.load().resolve("timm:resnet18").source == "timm"


def test_tag_and_revision_of_a_bare_name_reach_the_source(registry: Registry) -> None:
    resolved = registry.resolve("resnet18.tv_in1k@0123abc")
    assert (resolved.name, resolved.tag, resolved.revision) == ("timm:resnet18.tv_in1k", "tv_in1k", "0123abc")


def test_torchvision_weights_tag_selects_the_enum_member(registry: Registry) -> None:
    resolved = registry.resolve("torchvision:resnet50.IMAGENET1K_V1")
    assert (resolved.name, resolved.tag) == ("torchvision:resnet50.IMAGENET1K_V1", "IMAGENET1K_V1")
    assert resolved.weights.url.endswith(".pth")


def test_bare_torchvision_name_with_tag_resolves(registry: Registry) -> None:
    assert registry.resolve("regnet_x_400mf.IMAGENET1K_V1").tag == "IMAGENET1K_V1"


# --- aliases ----------------------------------------------------------------------------------------------------


def test_alias_to_an_alias_resolves_to_the_final_target(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nfast = "quick"\nquick = "timm:resnet10t"\n')
    resolved = Registry.load().resolve("fast")
    assert resolved.architecture == "resnet10t"
    assert resolved.requested == "fast"
    assert "alias 'fast'" in resolved.via


def test_builtin_alias_resolves_with_its_origin(registry: Registry) -> None:
    resolved = registry.resolve("resnet50-a1")
    assert resolved.name == "timm:resnet50.a1_in1k"
    assert resolved.via == "alias 'resnet50-a1' (registry.toml (built-in): aliases.resnet50-a1)"


def test_alias_to_a_tier_resolves_to_the_tier(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nbig = "maxsight/t5"\n')
    resolved = Registry.load().resolve("big")
    assert resolved.tier.name == "maxsight/t5"


def test_cycle_of_aliases_is_an_error_naming_the_alias(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nping = "pong"\npong = "ping"\n')
    with pytest.raises(CatalogError, match=r"alias '(ping|pong)' is part of a cycle"):
        Registry.load().resolve("ping")


def test_alias_pointing_at_itself_is_a_cycle(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nloop = "loop"\n')
    with pytest.raises(CatalogError, match="alias 'loop' is part of a cycle"):
        Registry.load().resolve("loop")


def test_alias_cycle_through_the_cli_is_one_line_and_exit_2(isolated: Path, zoo) -> None:
    write_project_catalog(isolated, '[aliases]\nping = "pong"\npong = "ping"\n')
    result = zoo("info", "ping")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert result.err.startswith("zoo: error: alias 'p")
    assert "cycle" in result.err


def test_alias_to_an_unknown_name_reports_the_unknown_target(isolated: Path) -> None:
    write_project_catalog(isolated, '[aliases]\nfast = "resnt18"\n')
    with pytest.raises(UnknownNameError, match="unknown model 'resnt18' - did you mean 'resnet18'"):
        Registry.load().resolve("fast")


# --- tiers -----------------------------------------------------------------------------------------------------------


def test_tier_name_resolves_to_its_spec(registry: Registry) -> None:
    resolved = registry.resolve("maxsight/t5")
    assert (resolved.name, resolved.source) == ("maxsight/t5", "tier")
    assert resolved.tier.rank == 5
    assert resolved.tier.backbone == "timm:resnet26t"
    assert resolved.via == "tier of family 'maxsight' (plugin zoo_maxsight)"


def test_catalog_tier_records_its_origin(registry: Registry) -> None:
    resolved = registry.resolve("lite/t1")
    assert resolved.tier.backbone == "timm:mobilenetv3_small_050"
    assert resolved.via == "tier of family 'lite' (registry.toml (built-in): families.lite.tiers.t1)"


def test_unknown_tier_of_a_known_family_lists_its_tiers(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.resolve("maxsight/t9")
    assert str(caught.value) == (
        "family 'maxsight' has no tier 't9' (tiers: t1, t2, t3, t4, t5; run `zoo tiers maxsight`)"
    )


def test_misspelled_tier_suggests_the_close_one(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"family 'lite' has no tier 'tt1' - did you mean 't1'\?"):
        registry.resolve("lite/tt1")


def test_misspelled_family_suggests_the_close_tier_name(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'maxsigt/t1' - did you mean 'maxsight/t1'\?"):
        registry.resolve("maxsigt/t1")


def test_unknown_family_counts_families_and_says_how_to_list(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.family("maxsigt")
    message = str(caught.value)
    assert message.startswith("unknown tier family 'maxsigt' - did you mean 'maxsight'?")
    assert f"({len(registry.families)} registered; run `zoo tiers` to list them)" in message


def test_tiers_are_ordered_by_rank(registry: Registry) -> None:
    assert [tier.name for tier in registry.family("maxsight").ordered()] == [f"maxsight/t{i}" for i in range(1, 6)]


# --- unknown names ------------------------------------------------------------------------------------------------------


def test_unknown_name_suggests_a_close_match(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"^unknown model 'resnt18' - did you mean 'resnet18'\?"):
        registry.resolve("resnt18")


def test_unknown_name_says_how_many_names_exist_and_how_to_list_them(registry: Registry, zoo) -> None:
    import json

    listed = json.loads(zoo("list", "--json").out)
    with pytest.raises(UnknownNameError) as caught:
        registry.resolve("qqqqqqqqqqqq")
    message = str(caught.value)
    assert f"({len(listed)} names are registered; run `zoo list` to see them" in message
    assert " - did you mean" not in message


def test_unknown_tagged_name_suggests_from_the_name_without_its_tag(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'resnet18'\?"):
        registry.resolve("resnt18.a1_in1k")


def test_unknown_timm_architecture_suggests_and_counts(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.resolve("timm:resnt18")
    message = str(caught.value)
    assert message.startswith("timm has no architecture 'resnt18' - did you mean 'resnet18'?")
    assert f"({len(registry.index('timm').names())} architectures; run `zoo list --source timm 'PATTERN*'`)" in message


def test_unknown_timm_tag_lists_the_known_tags(registry: Registry) -> None:
    with pytest.raises(
        UnknownNameError, match=r"timm:resnet10t has no pretrained tag 'c3_in1kk' - did you mean 'c3_in1k'\?"
    ):
        registry.resolve("timm:resnet10t.c3_in1kk")


def test_unknown_torchvision_weights_list_the_enum_members(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.resolve("torchvision:resnet50.IMAGENET1K_V3")
    message = str(caught.value)
    assert message.startswith("torchvision:resnet50 has no weights 'IMAGENET1K_V3'")
    assert "IMAGENET1K_V1, IMAGENET1K_V2" in message


def test_unknown_source_suggests_the_close_one(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.resolve("timn:resnet18")
    assert str(caught.value) == (
        "unknown source 'timn' - did you mean 'timm'? "
        "(sources: file, hf-hub, timm, torchvision; run `zoo plugins` to see plugins)"
    )


def test_unknown_recipe_suggests_and_says_how_to_list(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as caught:
        registry.recipe("linear-prob")
    message = str(caught.value)
    assert message.startswith("unknown recipe 'linear-prob' - did you mean 'linear-probe'?")
    assert f"({len(registry.recipes)} registered; run `zoo recipes` to list them)" in message


# --- listing --------------------------------------------------------------------------------------------------------------


def test_list_models_matches_a_shell_pattern_across_sources(registry: Registry) -> None:
    names = [row.name for row in registry.list_models("resnet1*")]
    assert "timm:resnet18" in names and "torchvision:resnet18" in names and "timm:resnet10t" in names
    assert all(name.split(":", 1)[1].startswith("resnet1") for name in names)


def test_list_models_pattern_is_case_insensitive(registry: Registry) -> None:
    assert [row.name for row in registry.list_models("RESNET10T")] == ["timm:resnet10t"]


def test_list_models_pattern_also_matches_tags(registry: Registry) -> None:
    rows = registry.list_models("resnet18.tv_*")
    assert [row.name for row in rows] == ["timm:resnet18"]
    assert "tv_in1k" in rows[0].tags


def test_list_models_rows_carry_the_pretrained_tags(registry: Registry) -> None:
    rows = {row.name: row for row in registry.list_models("resnet18")}
    assert "a1_in1k" in rows["timm:resnet18"].tags
    assert rows["torchvision:resnet18"].tags == ("IMAGENET1K_V1",)


def test_list_models_by_source(registry: Registry) -> None:
    rows = registry.list_models("resnet1*", source="torchvision")
    assert {row.name for row in rows} == {"torchvision:resnet18", "torchvision:resnet101", "torchvision:resnet152"}
    assert {row.source for row in rows} == {"torchvision"}


def test_list_models_pretrained_only_drops_names_without_tags(registry: Registry) -> None:
    everything = {row.name for row in registry.list_models("test_co*", source="timm")}
    pretrained = {row.name for row in registry.list_models("test_co*", source="timm", pretrained=True)}
    assert "timm:test_coatnet" in everything
    assert "timm:test_coatnet" not in pretrained
    assert "timm:test_convnext" in pretrained


def test_list_models_includes_aliases_and_tiers(registry: Registry) -> None:
    rows = {row.name: row for row in registry.list_models()}
    assert rows["resnet50-a1"].kind == "alias"
    assert rows["resnet50-a1"].description == "-> timm:resnet50.a1_in1k"
    assert rows["maxsight/t3"].kind == "tier"


def test_list_models_source_alias_and_tier_select_catalog_entries(registry: Registry) -> None:
    assert {row.kind for row in registry.list_models(source="alias")} == {"alias"}
    assert {row.name for row in registry.list_models("lite/*", source="tier")} == {"lite/t1", "lite/t2", "lite/t3"}


def test_list_models_alias_pattern_matches_its_target_too(registry: Registry) -> None:
    assert "resnet50-a1" in {row.name for row in registry.list_models("timm:resnet50*", source="alias")}


def test_pinned_alias_counts_as_pretrained(isolated: Path) -> None:
    write_project_catalog(
        isolated,
        f"""
        [aliases]
        plain = "timm:resnet10t"
        pinned = {{ target = "timm:resnet10t", weights = {{ url = "https://example.org/w.pt", sha256 = "{"0" * 64}" }} }}
        """,
    )
    names = {row.name for row in Registry.load().list_models(source="alias", pretrained=True)}
    assert "pinned" in names and "plain" not in names


def test_list_models_with_an_unknown_source_is_an_error_not_an_empty_list(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown source 'tim' - did you mean 'timm'\?"):
        registry.list_models("resnet*", source="tim")


def test_public_list_models_returns_canonical_names(isolated: Path) -> None:
    names = zoo_core.list_models("resnet1*", source="timm")
    assert isinstance(names, list) and all(isinstance(name, str) for name in names)
    assert "timm:resnet18" in names and "timm:resnet10t" in names
    assert not any(name.startswith("torchvision:") for name in names)


def test_public_list_models_pretrained_lists_each_tag_like_timm(isolated: Path) -> None:
    names = zoo_core.list_models("resnet1*", source="timm", pretrained=True)
    assert "timm:resnet18.a1_in1k" in names and "timm:resnet10t.c3_in1k" in names
    assert "timm:resnet18" not in names


def test_public_resolve_returns_the_resolved_spec(isolated: Path) -> None:
    resolved = zoo_core.resolve("timm:resnet10t.c3_in1k")
    assert (resolved.name, resolved.source, resolved.tag) == ("timm:resnet10t.c3_in1k", "timm", "c3_in1k")
