"""``zoo transfer``: the plan before anything is written, the checkpoint after, and every bad input.

Tried as a new user would: ``zoo transfer old.pt --to timm:resnet50 --num-classes 3 --plan`` shows
per layer group what will be copied, adapted, skipped and left new, and writes nothing; with
``-o`` the result loads with ``torch.load(weights_only=True)`` and its provenance records the plan.
Every bad input exits with status 2 and one ``zoo: error:`` line, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
import timm
import torch

from zoo_core.checkpoint import read_checkpoint, save_safetensors
from zoo_core.fileio import sha256_file
from zoo_core.groups import layer_groups
from zoo_core.plans import plan_transfer

# --- helpers -------------------------------------------------------------------------------------


def write_training_checkpoint(
    name: str = "old.pt", arch: str = "resnet10t", num_classes: int = 5, **extra: object
) -> Path:
    """A timm model trained 'for 60 epochs', saved in the working folder as users do."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    path = Path(name)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 60, "val_loss": 0.4, **extra}, path)
    return path


def files_here() -> set[str]:
    return {str(p.relative_to(Path.cwd())) for p in Path.cwd().rglob("*")}


def assert_refused(result, *fragments: str) -> None:
    """Exit 2, one ``zoo: error:`` line on stderr holding every fragment, no traceback."""
    assert result.code == 2, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def group_actions(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], groups) -> dict[str, str]:
    """'N copy, M new' per group, from the two state dicts (same name and shape -> copy)."""
    counts: dict[str, dict[str, int]] = {}
    params = {p: g.name for g in groups for p in g.params}
    for key, tensor in target.items():
        group = params.get(key) or params[key.rsplit(".", 1)[0] + ".weight"]  # BN buffers sit with their weight
        action = "copy" if key in source and source[key].shape == tensor.shape else "new"
        counts.setdefault(group, {}).setdefault(action, 0)
        counts[group][action] += 1
    return {group: ", ".join(f"{n} {a}" for a, n in sorted(c.items())) for group, c in counts.items()}


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker.resolve()}",))


# --- the plan, before anything is written ---------------------------------------------------------------


def test_plan_shows_per_layer_group_what_is_copied_and_left_new_and_writes_nothing(zoo) -> None:
    old = write_training_checkpoint()
    before = files_here()

    result = zoo("transfer", old, "--to", "timm:resnet50", "--num-classes", "3", "--plan")

    assert result.code == 0, result
    assert files_here() == before
    with torch.device("meta"):
        target = timm.create_model("resnet50", pretrained=False, num_classes=3)
    expected = group_actions(
        target.state_dict(), torch.load(old, weights_only=True)["model_state_dict"], layer_groups(target)
    )
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:] if line.strip() and not line.startswith(" ")}
    for group, counts in expected.items():
        assert rows[group].rstrip().endswith(counts), (group, rows[group], counts)
    assert re.search(r"^head\s+head\s+0\.0%\s+0/2\s+2 new$", result.out, re.M)
    assert re.search(r"^fc\.weight\s+new\s+source fc\.weight has shape \[5, 512\]", result.out, re.M)
    assert re.search(r"^fc\.weight\s+shape\s+target fc\.weight is \[3, 2048\]", result.out, re.M)
    assert "wrote" not in result.out


def test_plan_with_an_output_still_writes_nothing(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "--plan", "-o", "new.pt")

    assert result.code == 0, result
    assert not Path("new.pt").exists()
    assert "wrote" not in result.out


def test_plan_shows_adapted_tensors_under_the_adapt_shape_policy(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "--shape", "adapt", "--plan")

    assert result.code == 0, result
    assert re.search(r"^head\s+head\s+100\.0%\s+2/2\s+2 adapt$", result.out, re.M)
    assert re.search(r"^fc\.weight\s+adapt\s+fc\.weight \(truncate/pad \[5, 512\]->\[3, 512\]\)", result.out, re.M)


def test_plan_json_is_the_plan(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet14t", "--num-classes", "3", "--plan", "--json")

    assert result.code == 0, result
    data = json.loads(result.out)
    expected = plan_transfer(old, "timm:resnet14t", num_classes=3).to_dict()
    assert {key: data[key] for key in expected} == expected
    assert data["output"] is None


def test_a_training_checkpoint_below_the_epoch_threshold_gives_a_warning(zoo) -> None:
    old = write_training_checkpoint(epoch=5)

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--plan")

    assert result.code == 0, result
    assert "zoo: warning: old.pt: trained for only 5 epochs (< 50)" in result.err
    assert "trained for only" not in zoo("transfer", old, "--to", "timm:resnet10t", "--plan", "--min-epochs", "5").err


# --- applying: the written checkpoint and its provenance ---------------------------------------------------


def test_output_pt_loads_weights_only_and_its_provenance_records_the_plan_and_parent(zoo) -> None:
    old = write_training_checkpoint()
    source = torch.load(old, weights_only=True)["model_state_dict"]

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "-o", "new.pt")

    assert result.code == 0, result
    assert "wrote new.pt" in result.out
    saved = torch.load("new.pt", weights_only=True)
    state = saved["model_state_dict"]
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert state["fc.weight"].shape == (3, 512)
    provenance = saved["provenance"]
    assert provenance["transfer"] == plan_transfer(old, "timm:resnet10t", num_classes=3).to_dict()
    assert provenance["parent"]["sha256"] == sha256_file(old) == provenance["weights_sha256"]
    assert Path(provenance["parent"]["path"]).resolve() == old.resolve()
    assert provenance["model"].startswith("timm:resnet10t") and provenance["num_classes"] == 3


def test_output_safetensors_carries_the_provenance_as_metadata(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "-o", "new.safetensors")

    assert result.code == 0, result
    written = read_checkpoint("new.safetensors")
    source = torch.load(old, weights_only=True)["model_state_dict"]
    assert torch.equal(written.state_dict["layer3.0.conv2.weight"], source["layer3.0.conv2.weight"])
    assert written.provenance["transfer"]["counts"] == {
        "copy": 84,
        "rename": 0,
        "adapt": 0,
        "remap-classes": 0,
        "new": 2,
    }
    assert written.provenance["parent"]["sha256"] == sha256_file(old)


def test_output_with_class_names_copies_shared_classifier_rows(zoo) -> None:
    from zoo_core.checkpoint import save_checkpoint
    from zoo_core.provenance import make_provenance

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    provenance = make_provenance(model="timm:resnet10t", num_classes=3, class_names=["cat", "dog", "bird"])
    save_checkpoint(
        {"model_state_dict": model.state_dict(), "epoch": 60, "val_loss": 0.1, "provenance": provenance}, "old.pt"
    )

    result = zoo("transfer", "old.pt", "--to", "timm:resnet10t", "--classes", "dog,fox", "-o", "new.pt")

    assert result.code == 0, result
    saved = torch.load("new.pt", weights_only=True)
    assert torch.equal(saved["model_state_dict"]["fc.weight"][0], model.fc.weight.detach()[1])
    assert saved["provenance"]["class_names"] == ["dog", "fox"]
    assert {e["target"]: e["action"] for e in saved["provenance"]["transfer"]["entries"]}[
        "fc.weight"
    ] == "remap-classes"


def test_json_with_output_names_the_written_file(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "--json", "-o", "new.pt")

    assert result.code == 0, result
    assert json.loads(result.out)["output"] == "new.pt"
    assert Path("new.pt").is_file()


def test_a_met_coverage_policy_lets_the_transfer_through(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo(
        "transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "--require", "backbone=1.0", "-o", "new.pt"
    )

    assert result.code == 0, result
    assert Path("new.pt").is_file()


def test_rules_of_a_tier_family_apply_to_another_target(zoo) -> None:
    """``--rules maxsight`` brings the family's include rules: the temporal encoder becomes 'excluded'."""
    import zoo_core as zoo_api

    Path("zoo.toml").write_text(
        '[families.mine.tiers.t2]\nrank = 2\nbackbone = "timm:resnet14t"\nneck = { kind = "maxsight", dim = 256 }\n'
        'heads = { classifier = "linear" }\n'
    )
    torch.save(
        {
            "model_state_dict": zoo_api.create_model("maxsight/t5", num_classes=4).state_dict(),
            "epoch": 80,
            "val_loss": 0.1,
        },
        "t5.pt",
    )

    plain = json.loads(zoo("transfer", "t5.pt", "--to", "mine/t2", "--num-classes", "4", "--json").out)
    result = zoo("transfer", "t5.pt", "--to", "mine/t2", "--num-classes", "4", "--rules", "maxsight", "--json")

    assert result.code == 0, result
    ruled = json.loads(result.out)
    temporal = {u["source"]: u["reason"] for u in ruled["unused"] if u["source"].startswith("neck.temporal.")}
    assert len(temporal) == 4 and set(temporal.values()) == {"excluded"}
    assert {u["reason"] for u in plain["unused"] if u["source"].startswith("neck.temporal.")} == {"no target"}
    assert ruled["rules"]["include"] == [r"^backbone\.", r"^neck\.proj\.", r"^heads\."]


def test_maxsight_legacy_checkpoint_is_renamed_through_the_cli(zoo) -> None:
    import zoo_core as zoo_api

    state = zoo_api.create_model("maxsight/t2", num_classes=4).state_dict()
    legacy = {
        re.sub(r"^heads\.classifier\.fc\.", "classification_head.", re.sub(r"^neck\.proj\.", "fpn.", k)): v
        for k, v in state.items()
    }
    torch.save(legacy, "maxsight_t2.pth")

    result = zoo(
        "transfer", "maxsight_t2.pth", "--to", "maxsight/t5", "--num-classes", "4", "--rules", "maxsight", "--json"
    )

    assert result.code == 0, result
    entries = {e["target"]: e for e in json.loads(result.out)["entries"]}
    assert (
        entries["neck.proj.0.weight"]["action"] == "rename"
        and entries["neck.proj.0.weight"]["source"] == "fpn.0.weight"
    )
    assert entries["heads.classifier.fc.weight"]["source"] == "classification_head.weight"
    assert entries["neck.temporal.weight_ih_l0"]["action"] == "new"


# --- bad input: exit 2, one line, nothing written ------------------------------------------------------------


def test_a_pickle_payload_is_refused_and_never_runs(zoo) -> None:
    marker = Path("payload-ran")
    torch.save({"model_state_dict": {"w": torch.ones(1)}, "x": RunsShellCommand(marker)}, "evil.pt")
    before = files_here()

    result = zoo("transfer", "evil.pt", "--to", "timm:resnet10t", "-o", "new.pt")

    assert_refused(result, "evil.pt: refused to load", "'posix.system'", "re-save it")
    assert not marker.exists()
    assert files_here() == before


def test_a_pickle_payload_is_refused_by_the_installed_command(zoo_subprocess) -> None:
    marker = Path("payload-ran")
    Path("evil.pt").write_bytes(pickle.dumps({"w": RunsShellCommand(marker)}, protocol=2))

    result = zoo_subprocess("transfer", "evil.pt", "--to", "timm:resnet10t", "-o", "new.pt")

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("zoo: error: evil.pt: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not Path("new.pt").exists()


def test_a_non_allowlisted_global_is_refused_by_name(zoo) -> None:
    write_training_checkpoint(args=argparse.Namespace(lr=0.1))
    before = files_here()

    result = zoo("transfer", "old.pt", "--to", "timm:resnet10t", "-o", "new.pt")

    assert_refused(result, "old.pt: refused to load: it needs the global 'argparse.Namespace'")
    assert files_here() == before


def test_a_truncated_zip_is_refused(zoo) -> None:
    old = write_training_checkpoint()
    data = old.read_bytes()
    old.write_bytes(data[: len(data) // 3])
    before = files_here()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "-o", "new.pt")

    assert_refused(result, "old.pt: truncated or corrupt checkpoint", "restore it or save it again")
    assert files_here() == before


def test_a_broken_safetensors_header_is_refused(zoo) -> None:
    header = b'{"conv1.0.weight": {"dtype": "F32", "shape": [24, 3, 3, 3], "data_offsets": [0, '
    Path("old.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    before = files_here()

    result = zoo("transfer", "old.safetensors", "--to", "timm:resnet10t", "-o", "new.pt")

    assert_refused(result, "old.safetensors: broken safetensors file", "export it again")
    assert files_here() == before


def test_nan_weights_in_a_training_checkpoint_are_refused_by_name(zoo) -> None:
    torch.manual_seed(0)
    state = timm.create_model("resnet10t", pretrained=False, num_classes=5).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"model_state_dict": state, "epoch": 60, "val_loss": 0.4}, "old.pt")
    before = files_here()

    result = zoo("transfer", "old.pt", "--to", "timm:resnet10t", "-o", "new.pt")

    assert_refused(result, "old.pt: NaN or infinite values in layer2.0.conv1.weight", "use an earlier checkpoint")
    assert files_here() == before


def test_nan_weights_in_a_bare_safetensors_source_are_refused_by_name(zoo) -> None:
    torch.manual_seed(0)
    state = timm.create_model("resnet10t", pretrained=False, num_classes=5).state_dict()
    state["layer1.0.bn1.weight"][3] = float("inf")
    save_safetensors(state, "old.safetensors")
    before = files_here()

    result = zoo("transfer", "old.safetensors", "--to", "timm:resnet10t", "-o", "new.safetensors")

    assert_refused(result, "old.safetensors: NaN or infinite values in layer1.0.bn1.weight")
    assert files_here() == before


def test_a_shape_mismatch_under_strict_is_refused(zoo) -> None:
    old = write_training_checkpoint()
    before = files_here()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "--strict", "-o", "new.pt")

    assert_refused(result, "strict transfer: source 'fc.weight' [5, 512] does not fit", "--shape adapt")
    assert files_here() == before


def test_rename_rules_mapping_two_sources_onto_one_target_are_refused(zoo) -> None:
    old = write_training_checkpoint()
    before = files_here()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--rename", r"bias$=weight", "-o", "new.pt")

    assert_refused(
        result, "rename rules map two source tensors onto 'conv1.1.weight'", "'conv1.1.bias'", "more specific"
    )
    assert files_here() == before


def test_a_coverage_policy_not_met_is_refused(zoo) -> None:
    old = write_training_checkpoint()
    before = files_here()

    result = zoo(
        "transfer", old, "--to", "timm:resnet14t", "--num-classes", "3", "--require", "backbone=1.0", "-o", "new.pt"
    )

    assert_refused(result, "coverage policy not met: backbone is", "100% required", "--require backbone=")
    assert files_here() == before


def test_a_coverage_policy_naming_an_unknown_group_is_refused(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--require", "trunk=1.0", "-o", "new.pt")

    assert_refused(result, "'trunk'", "backbone")
    assert not Path("new.pt").exists()


@pytest.mark.parametrize("value", ["backbone", "backbone=", "=1.0", "backbone=all", "backbone=1.5", "backbone=-0.1"])
def test_a_malformed_require_is_refused(zoo, value: str) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--require", value, "-o", "new.pt")

    assert_refused(result, f"--require {value!r}: expected GROUP=FRACTION", "backbone=1.0")
    assert not Path("new.pt").exists()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("fc", "expected REGEX=REPLACEMENT"), ("=x", "expected REGEX=REPLACEMENT"), ("(=x", "bad regex '('")],
)
def test_a_malformed_rename_is_refused(zoo, value: str, fragment: str) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--rename", value, "-o", "new.pt")

    assert_refused(result, "--rename", fragment)
    assert not Path("new.pt").exists()


def test_an_unknown_rules_family_is_refused(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "--rules", "maxsite", "-o", "new.pt")

    assert_refused(result, "'maxsite'", "zoo tiers")
    assert not Path("new.pt").exists()


def test_an_output_name_with_another_suffix_is_refused(zoo) -> None:
    old = write_training_checkpoint()

    result = zoo("transfer", old, "--to", "timm:resnet10t", "-o", "new.onnx")

    assert_refused(result, "-o new.onnx", ".safetensors")
    assert not Path("new.onnx").exists()


def test_a_missing_source_file_is_refused(zoo) -> None:
    result = zoo("transfer", "./missing.pt", "--to", "timm:resnet10t", "--plan")

    assert_refused(result, "missing.pt")


def test_a_failed_transfer_keeps_an_existing_output_intact(zoo) -> None:
    old = write_training_checkpoint()
    assert zoo("transfer", old, "--to", "timm:resnet10t", "--num-classes", "3", "-o", "new.pt").code == 0
    digest = sha256_file("new.pt")

    result = zoo(
        "transfer", old, "--to", "timm:resnet14t", "--num-classes", "3", "--require", "backbone=1.0", "-o", "new.pt"
    )

    assert result.code == 2
    assert sha256_file("new.pt") == digest
