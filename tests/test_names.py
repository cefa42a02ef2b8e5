"""The name grammar ``[source:]name[.tag][@revision]`` (zoo_core/names.py)."""

from __future__ import annotations

import pytest

from zoo_core.errors import ZooError
from zoo_core.names import ModelRef, is_tier_name, looks_like_path, parse_name, split_source

# --- sources, tags, revisions ------------------------------------------------------------------------


def test_source_name_and_tag_are_split() -> None:
    ref = parse_name("timm:resnet50.a1_in1k")
    assert (ref.source, ref.name, ref.tag, ref.revision) == ("timm", "resnet50", "a1_in1k", None)


def test_bare_name_has_no_source() -> None:
    ref = parse_name("resnet50")
    assert (ref.source, ref.name, ref.tag, ref.revision) == (None, "resnet50", None, None)


def test_only_the_first_dot_separates_the_tag() -> None:
    ref = parse_name("timm:vit_small_patch16_224.augreg_in21k_ft_in1k.extra")
    assert ref.name == "vit_small_patch16_224"
    assert ref.tag == "augreg_in21k_ft_in1k.extra"


def test_revision_follows_the_last_at_sign() -> None:
    ref = parse_name("timm:resnet50.a1_in1k@0123abcd")
    assert (ref.name, ref.tag, ref.revision) == ("resnet50", "a1_in1k", "0123abcd")


def test_torchvision_weights_enum_member_is_the_tag_when_revisions_are_off() -> None:
    # torchvision declares tagged=True, revisioned=False: its names still carry a weights tag
    ref = parse_name("torchvision:resnet50.IMAGENET1K_V2", tagged=True, revisioned=False)
    assert (ref.source, ref.name, ref.tag) == ("torchvision", "resnet50", "IMAGENET1K_V2")


def test_untagged_source_keeps_dots_in_the_name() -> None:
    # hf-hub repository ids contain dots; the whole id is the name
    ref = parse_name("hf-hub:timm/resnet50.a1_in1k@9f3c2e1", tagged=False)
    assert (ref.source, ref.name, ref.tag, ref.revision) == ("hf-hub", "timm/resnet50.a1_in1k", None, "9f3c2e1")


def test_source_names_may_contain_hyphens_digits_and_underscores() -> None:
    assert split_source("hf-hub:timm/x") == ("hf-hub", "timm/x")
    assert split_source("my_src2:thing") == ("my_src2", "thing")


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_name("  timm:resnet18.tv_in1k \n") == ModelRef("resnet18", "timm", "tv_in1k")


# --- canonical form ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["timm:resnet50.a1_in1k", "timm:resnet50.a1_in1k@abc123", "resnet50", "maxsight/t5", "timm:resnet10t@main"],
)
def test_str_gives_the_name_back_in_canonical_form(text: str) -> None:
    assert str(parse_name(text)) == text


def test_base_is_name_and_tag_without_source_or_revision() -> None:
    assert parse_name("timm:resnet50.a1_in1k@abc").base == "resnet50.a1_in1k"
    assert parse_name("timm:resnet50@abc").base == "resnet50"


# --- file paths ----------------------------------------------------------------------------------------


def test_file_paths_are_taken_verbatim() -> None:
    ref = parse_name("file:./runs/exp1@2/best.model.pt", tagged=False, revisioned=False)
    assert (ref.source, ref.name, ref.tag, ref.revision) == ("file", "./runs/exp1@2/best.model.pt", None, None)


def test_absolute_file_paths_keep_their_leading_slash() -> None:
    ref = parse_name("file:/data/ckpt/best.pt", tagged=False, revisioned=False)
    assert ref.name == "/data/ckpt/best.pt"


def test_urls_are_not_split_as_a_source() -> None:
    assert split_source("https://example.org/w.pt") == (None, "https://example.org/w.pt")


@pytest.mark.parametrize("text", ["best.pt", "runs/exp/best.PTH", "w.safetensors", "model.bin", "last.ckpt"])
def test_weights_suffixes_look_like_paths(text: str) -> None:
    assert looks_like_path(text)


@pytest.mark.parametrize("text", ["resnet50.a1_in1k", "maxsight/t5", "notes.txt"])
def test_model_names_do_not_look_like_paths(text: str) -> None:
    assert not looks_like_path(text)


# --- tiers ---------------------------------------------------------------------------------------------


def test_family_slash_tier_is_a_tier_name() -> None:
    assert is_tier_name("maxsight/t5")
    ref = parse_name("maxsight/t5")
    assert (ref.source, ref.name, ref.tag) == (None, "maxsight/t5", None)


@pytest.mark.parametrize(
    "text",
    ["hf-hub:timm/resnet50", "resnet50", "a/b/c", "./runs/best", "/abs/x", "timm/resnet50.a1_in1k"],
)
def test_sourced_nested_relative_and_tagged_names_are_not_tiers(text: str) -> None:
    assert not is_tier_name(text)


# --- malformed names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_name_is_an_error_that_says_how_to_list(text: str) -> None:
    with pytest.raises(ZooError, match=r"empty model name.*zoo list"):
        parse_name(text)


def test_nothing_after_at_sign_is_an_error() -> None:
    with pytest.raises(ZooError, match=r"'timm:resnet50@': nothing after '@'"):
        parse_name("timm:resnet50@")


def test_nothing_after_source_is_an_error() -> None:
    with pytest.raises(ZooError, match=r"'timm:@abc': no model name after 'timm:'"):
        parse_name("timm:@abc")


def test_empty_tag_after_the_dot_is_an_error() -> None:
    with pytest.raises(ZooError, match=r"'resnet50\.': expected name\.tag, e\.g\. resnet50\.a1_in1k"):
        parse_name("resnet50.")


@pytest.mark.parametrize("text", ["res net50", "timm:resnet50!", "timm:résnet", "timm:-x", ".a1_in1k"])
def test_characters_outside_the_grammar_are_an_error_naming_the_input(text: str) -> None:
    with pytest.raises(ZooError) as caught:
        parse_name(text)
    message = str(caught.value)
    assert f"'{text}'" in message
    assert "letters, digits" in message
