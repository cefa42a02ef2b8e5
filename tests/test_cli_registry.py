"""``zoo list / info / tiers / recipes``, bad input on the command line, and the name index."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import assert_one_error
from conftest import folder_snapshot as snapshot

from zoo_core.catalog import load_catalog
from zoo_core.sources import INDEX_FORMAT


def table_rows(out: str) -> dict[str, list[str]]:
    """Rows of a printed table keyed by their first cell (header skipped)."""
    rows = [line.split("  ") for line in out.splitlines()[1:] if line.strip()]
    return {cells[0].strip(): [cell.strip() for cell in cells if cell.strip()] for cells in rows}


def zoo_home() -> Path:
    return Path(os.environ["ZOO_HOME"])


def timm_index_file() -> Path:
    (path,) = (zoo_home() / "index").glob("timm-*.json")
    return path


def timm_parameter_count(arch: str, **kwargs) -> int:
    import timm

    return sum(p.numel() for p in timm.create_model(arch, pretrained=False, **kwargs).parameters())


# --- zoo list ------------------------------------------------------------------------------------------------


def test_list_pattern_shows_timm_and_torchvision_entries_with_their_tags(zoo) -> None:
    result = zoo("list", "resnet1*")
    assert result.code == 0, result
    assert result.out.splitlines()[0].split() == ["NAME", "KIND", "TAGS", "/", "TARGET"]
    rows = table_rows(result.out)
    assert rows["timm:resnet18"][1] == "model"
    assert {"a1_in1k", "tv_in1k"} <= set(rows["timm:resnet18"][2].split(", "))
    assert rows["timm:resnet10t"][2] == "c3_in1k"
    assert rows["torchvision:resnet18"][2] == "IMAGENET1K_V1"
    assert rows["torchvision:resnet101"][2] == "IMAGENET1K_V1, IMAGENET1K_V2"
    assert all(name.split(":", 1)[1].startswith("resnet1") for name in rows)


def test_list_source_keeps_only_that_source(zoo) -> None:
    rows = table_rows(zoo("list", "resnet1*", "--source", "torchvision").out)
    assert set(rows) == {"torchvision:resnet18", "torchvision:resnet101", "torchvision:resnet152"}


def test_list_pretrained_drops_architectures_without_weights(zoo) -> None:
    everything = table_rows(zoo("list", "test_co*", "--source", "timm").out)
    pretrained = table_rows(zoo("list", "test_co*", "--source", "timm", "--pretrained").out)
    assert "timm:test_coatnet" in everything and "timm:test_coatnet" not in pretrained
    assert "timm:test_convnext" in pretrained


def test_list_json_gives_one_object_per_name(zoo) -> None:
    result = zoo("list", "resnet18", "--json")
    assert result.code == 0, result
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert set(rows) == {"timm:resnet18", "torchvision:resnet18"}
    assert rows["torchvision:resnet18"] == {
        "name": "torchvision:resnet18",
        "kind": "model",
        "source": "torchvision",
        "tags": ["IMAGENET1K_V1"],
        "pretrained": True,
        "description": "",
    }


def test_list_shows_aliases_with_targets_and_tiers(zoo) -> None:
    rows = table_rows(zoo("list", "resnet50-a1").out)
    assert rows["resnet50-a1"] == ["resnet50-a1", "alias", "-> timm:resnet50.a1_in1k"]
    tiers = table_rows(zoo("list", "maxsight/*").out)
    assert set(tiers) == {f"maxsight/t{i}" for i in range(1, 6)}
    assert tiers["maxsight/t1"][1] == "tier"


def test_list_with_no_match_says_so_and_succeeds(zoo) -> None:
    result = zoo("list", "zzz_no_such_*")
    assert result.code == 0
    assert result.out == ""
    assert "no names match 'zzz_no_such_*'" in result.err


def test_list_without_pattern_lists_every_source(zoo) -> None:
    rows = json.loads(zoo("list", "--json").out)
    assert {row["source"] for row in rows} == {"alias", "tier", "timm", "torchvision"}
    indexed = sum(len(json.loads(path.read_text())["entries"]) for path in (zoo_home() / "index").glob("*.json"))
    catalog = load_catalog()
    tiers = sum(len(family.tiers) for family in catalog.families.values()) + 5 + 4  # + the maxsight tiers and the four detection heads
    assert len(rows) == indexed + len(catalog.aliases) + tiers


# --- zoo info ------------------------------------------------------------------------------------------------------


def test_info_json_reports_name_source_tag_revision_cache_and_parameters(zoo) -> None:
    result = zoo("info", "timm:resnet10t", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["name"] == "timm:resnet10t.c3_in1k"
    assert data["requested"] == "timm:resnet10t"
    assert (data["source"], data["architecture"], data["tag"], data["revision"]) == (
        "timm",
        "resnet10t",
        "c3_in1k",
        None,
    )
    assert data["pretrained"] is True and data["num_classes"] == 1000
    assert data["cached"] is False and data["files"] == []
    assert data["parameters"] == timm_parameter_count("resnet10t")


def test_info_text_shows_each_field_on_its_own_line(zoo) -> None:
    result = zoo("info", "resnet10t")
    assert result.code == 0, result
    lines = [line.split(None, 1) for line in result.out.splitlines()]
    fields = {cells[0]: cells[1] for cells in lines if len(cells) == 2}
    assert fields["name"] == "timm:resnet10t.c3_in1k"
    assert fields["requested"] == "resnet10t  (source timm)"
    assert fields["source"] == "timm  (architecture resnet10t)"
    assert fields["tag"] == "c3_in1k"
    assert fields["revision"] == "-"
    assert fields["cached"] == "no"
    assert fields["parameters"].startswith(f"{timm_parameter_count('resnet10t'):,} ")


def test_info_num_classes_changes_the_parameter_count(zoo) -> None:
    data = json.loads(zoo("info", "timm:resnet10t", "--num-classes", "3", "--json").out)
    assert data["parameters"] == timm_parameter_count("resnet10t", num_classes=3)


def test_info_on_a_cached_model_lists_its_files_with_sha256(zoo, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert zoo("import", "timm:resnet10t.c3_in1k", str(weights)).code == 0

    data = json.loads(zoo("info", "timm:resnet10t", "--json").out)
    assert data["cached"] is True
    (entry,) = data["files"]
    assert (entry["filename"], entry["sha256"], entry["size"], entry["pinned"]) == (
        "resnet10t.safetensors",
        digest,
        weights.stat().st_size,
        True,
    )
    assert Path(entry["path"]).is_file()

    text = zoo("info", "timm:resnet10t").out
    assert "cached        yes" in text
    assert f"resnet10t.safetensors  sha256 {digest}" in text and "pinned" in text


def test_info_groups_partition_every_parameter(zoo) -> None:
    data = json.loads(zoo("info", "timm:resnet10t", "--groups", "--json").out)
    groups = data["groups"]
    assert [group["role"] for group in groups][-1] == "head"
    assert sum(group["numel"] for group in groups) == data["parameters"]
    text = zoo("info", "timm:resnet10t", "--groups").out
    assert "GROUP" in text and "ROLE" in text
    assert all(group["name"] in text for group in groups)


def test_info_on_a_tier_builds_it(zoo) -> None:
    data = json.loads(zoo("info", "maxsight/t1", "--num-classes", "3", "--json").out)
    assert (data["name"], data["source"], data["pretrained"], data["cached"]) == ("maxsight/t1", "tier", False, False)
    assert data["parameters"] > timm_parameter_count("resnet10t", num_classes=0)


def test_info_on_an_alias_says_how_it_was_found(zoo) -> None:
    result = zoo("info", "resnet50-a1")
    assert result.code == 0, result
    assert (
        "requested     resnet50-a1  (alias 'resnet50-a1' (registry.toml (built-in): aliases.resnet50-a1))" in result.out
    )


def test_info_on_a_torchvision_weights_tag(zoo) -> None:
    result = zoo("info", "torchvision:mobilenet_v3_small.IMAGENET1K_V1", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert (data["name"], data["source"], data["tag"]) == (
        "torchvision:mobilenet_v3_small.IMAGENET1K_V1",
        "torchvision",
        "IMAGENET1K_V1",
    )


# --- zoo tiers / zoo recipes -------------------------------------------------------------------------------------------------


def test_tiers_lists_every_family_with_its_tiers(zoo) -> None:
    result = zoo("tiers")
    assert result.code == 0, result
    rows = table_rows(result.out)
    assert rows["lite"][1] == "t1, t2, t3"
    assert rows["maxsight"][1] == "t1, t2, t3, t4, t5"


def test_tiers_of_one_family_shows_rank_backbone_neck_and_heads(zoo) -> None:
    result = zoo("tiers", "maxsight")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].startswith("maxsight: ")
    rows = {
        cells[0]: cells for cells in (line.split() for line in lines[2:]) if cells and cells[0].startswith("maxsight/")
    }
    assert list(rows) == [f"maxsight/t{i}" for i in range(1, 6)]
    assert rows["maxsight/t1"][:4] == ["maxsight/t1", "1", "timm:resnet10t", "-"]
    assert rows["maxsight/t5"][:4] == ["maxsight/t5", "5", "timm:resnet26t", "maxsight"]
    assert "transfer rules:" in result.out


def test_tiers_json_describes_each_tier(zoo) -> None:
    data = json.loads(zoo("tiers", "lite", "--json").out)
    assert data["name"] == "lite"
    assert data["origin"] == "registry.toml (built-in): families.lite"
    assert [tier["name"] for tier in data["tiers"]] == ["lite/t1", "lite/t2", "lite/t3"]
    assert data["tiers"][2]["neck"] == {"kind": "mlp", "dim": 512}
    assert data["rules"]["shape"] == "skip"


def test_recipes_lists_every_recipe_with_stage_and_epoch_counts(zoo) -> None:
    result = zoo("recipes")
    assert result.code == 0, result
    rows = table_rows(result.out)
    assert rows["multigriddet-full"][1:3] == ["3", "20"]
    assert rows["ulmfit-gradual"][1:3] == ["1", "8"]
    assert {"linear-probe", "full-finetune", "lightweight-3stage", "from-scratch"} <= set(rows)


def test_recipe_shows_its_stage_table(zoo) -> None:
    result = zoo("recipes", "multigriddet-full")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].startswith("multigriddet-full: Fine-tune from full-model weights")
    assert lines[0].endswith("(registry.toml (built-in): recipes.multigriddet-full)")
    assert "max lr 0.0001" in lines[1]
    header = lines[2].split()
    assert header[:5] == ["#", "STAGE", "EPOCHS", "TRAINS", "LR"]
    stages = [line.split("  ") for line in lines[3:]]
    cells = [[cell.strip() for cell in row if cell.strip()] for row in stages]
    assert [row[:5] for row in cells] == [
        ["0", "heads", "5", "heads", "0.0001"],
        ["1", "neck", "5", "all but backbone", "5e-05"],
        ["2", "all", "10", "all", "3e-05"],
    ]
    assert "mosaic=0.3, mixup=0.1" in lines[4]
    assert "early stop val_loss/10" in lines[5]


def test_recipe_json_holds_every_stage(zoo) -> None:
    data = json.loads(zoo("recipes", "lightweight-3stage", "--json").out)
    assert [stage["train"] for stage in data["stages"][:2]] == [["head"], ["head", "neck"]]
    assert data["stages"][2]["lr"] == {"head": 2e-4, "neck": 1e-4, "backbone": 2e-5}
    assert data["origin"] == "registry.toml (built-in): recipes.lightweight-3stage"


# --- bad input: exit 2, one line ----------------------------------------------------------------------------------------------------


def test_unknown_model_is_one_line_with_a_suggestion(zoo) -> None:
    assert_one_error(zoo("info", "resnt18"), "unknown model 'resnt18' - did you mean 'resnet18'?", "run `zoo list`")


def test_unknown_source_is_one_line_with_a_suggestion(zoo) -> None:
    assert_one_error(zoo("list", "--source", "torchvison"), "unknown source 'torchvison' - did you mean 'torchvision'?")


def test_unknown_source_prefix_in_a_name_is_one_line(zoo) -> None:
    assert_one_error(zoo("info", "timn:resnet18"), "unknown source 'timn' - did you mean 'timm'?")


def test_malformed_name_is_one_line(zoo) -> None:
    assert_one_error(zoo("info", "timm:resnet18@"), "resnet18@': nothing after '@'; give a revision")


def test_malformed_catalog_is_one_line_naming_file_and_key(zoo, isolated: Path) -> None:
    (isolated / "zoo.toml").write_text("[recipes.fast]\n[[recipes.fast.stages]]\nepochs = 1\nlr = -1\n")
    assert_one_error(zoo("list"), "zoo.toml: recipes.fast.stages[0].lr: must be > 0, got -1")


def test_unknown_recipe_is_one_line_with_a_suggestion(zoo) -> None:
    assert_one_error(
        zoo("recipes", "multigriddet-ful"),
        "unknown recipe 'multigriddet-ful' - did you mean 'multigriddet-full'?",
        "run `zoo recipes`",
    )


def test_unknown_family_is_one_line_with_a_suggestion(zoo) -> None:
    assert_one_error(
        zoo("tiers", "maxsigt"), "unknown tier family 'maxsigt' - did you mean 'maxsight'?", "run `zoo tiers`"
    )


def test_unknown_tier_is_one_line_listing_the_tiers(zoo) -> None:
    assert_one_error(zoo("info", "lite/t7"), "family 'lite' has no tier 't7'", "(tiers: t1, t2, t3")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["list", "--bogus"], "unrecognized arguments: --bogus"),
        (["info"], "the following arguments are required: name"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["info", "resnet10t", "--num-classes", "three"], "argument --num-classes: expected a whole number, got 'three'"),
        (["list", "a*", "b*"], "unrecognized arguments: b*"),
    ],
    ids=["unknown-option", "missing-argument", "unknown-command", "bad-int", "extra-argument"],
)
def test_bad_arguments_are_one_line_pointing_at_help(zoo, argv: list[str], fragment: str) -> None:
    assert_one_error(zoo(*argv), fragment, "--help")


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "resnt18"],
        ["list", "--source", "tim"],
        ["recipes", "nope"],
        ["tiers", "nope"],
        ["pull", "resnt18"],
        ["import", "resnt18", "missing.safetensors"],
    ],
    ids=["info", "list", "recipes", "tiers", "pull", "import"],
)
def test_bad_input_writes_nothing(zoo, isolated: Path, argv: list[str]) -> None:
    before = snapshot(isolated, zoo_home())
    assert_one_error(zoo(*argv))
    assert snapshot(isolated, zoo_home()) == before


def test_debug_adds_the_traceback(zoo) -> None:
    result = zoo("--debug", "info", "resnt18")
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert "UnknownNameError" in result.err
    assert result.err.strip().splitlines()[-1].startswith("zoo: error: unknown model 'resnt18'")


def test_no_command_prints_help(zoo) -> None:
    result = zoo()
    assert result.code == 0
    assert "usage: zoo" in result.out
    for command in ("list", "info", "pull", "import", "plugins", "tiers", "recipes"):
        assert command in result.out


def test_bad_input_through_a_real_process_exits_2_with_one_line(zoo_subprocess) -> None:
    result = zoo_subprocess("tiers", "maxsigt")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "zoo: error: unknown tier family 'maxsigt' - did you mean 'maxsight'? (3 registered; run `zoo tiers` to list them)"
    ]


# --- the name index ---------------------------------------------------------------------------------------------------------------


def plant_entry(path: Path, name: str, *, version: str | None = None) -> dict:
    data = json.loads(path.read_text())
    data["entries"].append([name, ["planted_tag"]])
    if version is not None:
        data["version"] = version
    path.write_text(json.dumps(data))
    return data


def test_list_reads_the_index_recorded_for_the_installed_version(zoo) -> None:
    plant_entry(timm_index_file(), "zz_planted_arch")
    rows = table_rows(zoo("list", "zz_planted*").out)
    assert rows == {"timm:zz_planted_arch": ["timm:zz_planted_arch", "model", "planted_tag"]}


def test_index_recorded_for_another_version_is_rebuilt(zoo) -> None:
    path = timm_index_file()
    installed = json.loads(path.read_text())["version"]
    plant_entry(path, "zz_planted_arch", version="timm-0.0.1")

    assert zoo("list", "zz_planted*").out == ""
    rebuilt = json.loads(path.read_text())
    assert rebuilt["version"] == installed
    assert rebuilt["format"] == INDEX_FORMAT
    assert "zz_planted_arch" not in {name for name, _ in rebuilt["entries"]}
    assert ["resnet10t", ["c3_in1k"]] in rebuilt["entries"]


def test_index_in_an_unknown_format_is_rebuilt(zoo) -> None:
    path = timm_index_file()
    data = json.loads(path.read_text())
    data["format"] = INDEX_FORMAT + 99
    path.write_text(json.dumps(data))
    assert "timm:resnet10t" in zoo("list", "resnet10t").out
    assert json.loads(path.read_text())["format"] == INDEX_FORMAT


def test_corrupt_index_is_rebuilt(zoo) -> None:
    path = timm_index_file()
    path.write_text("{ not json")
    assert "timm:resnet10t" in zoo("list", "resnet10t").out
    assert json.loads(path.read_text())["entries"]


def test_an_empty_zoo_home_gets_a_fresh_index(zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-home"
    monkeypatch.setenv("ZOO_HOME", str(empty))
    result = zoo("list", "resnet18")
    assert result.code == 0, result
    assert set(table_rows(result.out)) == {"timm:resnet18", "torchvision:resnet18"}
    written = sorted(path.name.split("-", 1)[0] for path in (empty / "index").glob("*.json"))
    assert written == ["timm", "torchvision"]
