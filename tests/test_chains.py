"""Chains across datasets: the catalog section, ``zoo chain`` end to end, exact resume, lineage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from zoo_core import hookimpl
from zoo_core.catalog import parse_catalog
from zoo_core.chains import run_chain
from zoo_core.checkpoint import read_checkpoint
from zoo_core.errors import CatalogError
from zoo_core.registry import Registry

TINY = "timm:resnet10t"


def _chain_toml(tmp_path: Path, *, recipe: str = "from-scratch", extra_step: str = "") -> Path:
    """Three data folders: 2 classes, then 3 (two shared), then 4 (three shared)."""
    first = write_image_folder(tmp_path / "a", classes=2, per_class=8)
    second = write_image_folder(tmp_path / "b", classes=3, per_class=8, seed=1)
    third = write_image_folder(tmp_path / "c", classes=4, per_class=8, seed=2)
    catalog = tmp_path / "chains.toml"
    catalog.write_text(
        f"""
[chains.grow]
model = "{TINY}"
pretrained = false
image_size = 32
recipe = "{recipe}"
scratch = "random"
threshold = 0.5

[[chains.grow.steps]]
name = "two"
data = "{first}"
set = {{ "stages.0.lr" = 4e-3, batch_size = 8 }}

[[chains.grow.steps]]
name = "three"
data = "{second}"
set = ["batch_size=8"]
{extra_step}
[[chains.grow.steps]]
name = "four"
data = "{third}"
set = ["batch_size=8"]
"""
    )
    return catalog


def _fc(path: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(path).state_dict
    return {key: value for key, value in state.items() if key.startswith(("fc.", "head.fc."))}


# --- the catalog ---------------------------------------------------------------------------------


def test_a_chain_in_a_catalog_becomes_a_spec_with_its_steps():
    layer = parse_catalog(
        {"chains": {"c": {"model": TINY, "recipe": "full-finetune", "steps": [
            {"name": "one", "data": "d1", "set": {"stages.*.epochs": 1, "stages.0.lr": {"head": 1e-3}}},
            {"name": "two", "data": "d2", "classes": ["a", "b"], "recipe": "linear-probe"},
        ]}}},
        "zoo.toml",
    )  # fmt: skip
    chain = layer.chains["c"]
    assert [step.name for step in chain.steps] == ["one", "two"]
    assert chain.steps[0].set == ("stages.*.epochs=1", "stages.0.lr={head = 0.001}")
    assert chain.recipe_of(chain.steps[1]) == "linear-probe" and chain.steps[1].classes == ("a", "b")


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ({"steps": [{"name": "a", "data": "d"}]}, "zoo.toml: chains.c.model: is required"),
        ({"model": TINY, "steps": [{"name": "a", "data": "d"}]}, "zoo.toml: chains.c.steps[0].recipe: is required"),
        ({"model": TINY, "recipe": "r", "steps": []}, "zoo.toml: chains.c.steps: is required"),
        ({"model": TINY, "recipe": "r", "steps": [{"name": "a"}]}, "zoo.toml: chains.c.steps[0].data: is required"),
        ({"model": TINY, "recipe": "r", "steps": [{"name": "a", "data": "d", "epochs": 1}]}, "chains.c.steps[0].epochs: unknown key"),
        ({"model": TINY, "recipe": "r", "steps": [{"name": "a", "data": "d"}, {"name": "a", "data": "e"}]}, "chains.c.steps[1].name: 'a' names two steps"),
        ({"model": TINY, "recipe": "r", "scratch": "zero", "steps": [{"name": "a", "data": "d"}]}, "chains.c.scratch"),
        ({"model": TINY, "recipe": "r", "steps": [{"name": "a b", "data": "d"}]}, "chains.c.steps[0].name"),
        ({"model": TINY, "recipe": "r", "steps": [{"name": "a", "data": "d", "set": 3}]}, "chains.c.steps[0].set: must be a table"),
    ],
)
def test_a_bad_chain_is_refused_with_its_file_and_key(chain, message):
    with pytest.raises(CatalogError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_catalog({"chains": {"c": chain}}, "zoo.toml")


def test_a_plugin_registers_a_chain(make_registry):
    class Plugin:
        @hookimpl
        def zoo_register_chains(self, register):
            register({"name": "mine", "model": TINY, "recipe": "full-finetune", "steps": [{"name": "a", "data": "d"}]})

    registry = make_registry(Plugin())
    assert registry.chain("mine").steps[0].data == "d"


def test_zoo_chains_lists_the_built_in_digits_chain(zoo):
    listed = zoo("chains")
    assert listed.code == 0 and "digits-progressive" in listed.out
    shown = zoo("chains", "digits-progressive", "--json")
    assert [step["name"] for step in json.loads(shown.out)["steps"]] == ["two", "five", "ten"]


def test_an_unknown_chain_suggests_the_close_name(zoo):
    result = zoo("chains", "digits-progresive")
    assert result.code == 2 and "did you mean 'digits-progressive'" in result.err


# --- running a chain ---------------------------------------------------------------------------------


def test_a_three_step_chain_runs_through_the_cli_and_carries_class_rows(zoo, tmp_path):
    catalog = _chain_toml(tmp_path)
    result = zoo("--registry", catalog, "chain", "grow", "--run-dir", tmp_path / "run", "--set", "stages.*.epochs=1", "--compare-scratch")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "run" / "chain.json").read_text())
    assert record["status"] == "finished" and [s["status"] for s in record["steps"]] == ["finished"] * 3
    assert [s["classes"] for s in record["steps"]] == [2, 3, 4]
    assert record["steps"][0]["fresh"]["same_as_transfer"] is True  # random start both ways: one run
    assert record["steps"][1]["fresh"]["folder"] == "02-three-fresh"
    assert "with transfer" in result.out and "3 four" in result.out
    # step 2 started from step 1's best: its plan remapped the shared classes' rows by name
    transfer = json.loads((tmp_path / "run" / "02-three" / "transfer.json").read_text())
    provenance = json.loads((tmp_path / "run" / "02-three" / "provenance.json").read_text())
    assert provenance["parent"]["sha256"] == record["steps"][0]["transfer"]["sha256"]
    assert "remap-classes" in json.dumps(transfer)


def test_the_next_step_starts_with_the_shared_class_rows_bitwise(tmp_path, registry):
    from zoo_core.engine.start import start_model

    catalog = _chain_toml(tmp_path)
    chained = Registry.load([catalog])
    run_chain("grow", tmp_path / "run", registry=chained, overrides=["stages.*.epochs=1"])
    best = tmp_path / "run" / "01-two" / "checkpoints" / "best.pt"
    before = _fc(best)
    start = start_model(str(best), registry=chained, class_names=["class0", "class1", "class2"], num_classes=3, pretrained=False)
    after = {key: value for key, value in start.model.state_dict().items() if key in before}
    for key, rows in before.items():
        assert torch.equal(after[key][:2], rows), key  # class0 and class1 carried by name
    assert start.provenance["lineage"][0]["sha256"] == json.loads((tmp_path / "run" / "chain.json").read_text())["steps"][0]["transfer"]["sha256"]


class InterruptStep:
    """Ctrl-C once, after the first epoch of the step whose folder starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @hookimpl
    def zoo_on_epoch_end(self, run, epoch, metrics):
        if run.run_dir.name.startswith(self.prefix) and epoch == 0:
            raise KeyboardInterrupt


def test_a_chain_killed_in_step_two_resumes_to_the_same_final_weights(tmp_path, make_registry):
    catalog = _chain_toml(tmp_path)
    overrides = ["stages.*.epochs=2"]
    run_chain("grow", tmp_path / "straight", registry=Registry.load([catalog]), overrides=overrides)
    with pytest.raises(KeyboardInterrupt):
        run_chain("grow", tmp_path / "broken", registry=make_registry(InterruptStep("02-"), files=[catalog]), overrides=overrides)
    record = json.loads((tmp_path / "broken" / "chain.json").read_text())
    assert [s["status"] for s in record["steps"]] == ["finished", "running", "pending"]
    run_chain("grow", tmp_path / "broken", registry=Registry.load([catalog]), overrides=overrides, resume=True)
    straight = read_checkpoint(tmp_path / "straight" / "03-four" / "checkpoints" / "last.pt").state_dict
    resumed = read_checkpoint(tmp_path / "broken" / "03-four" / "checkpoints" / "last.pt").state_dict
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


@pytest.fixture
def finished_chain(tmp_path):
    catalog = _chain_toml(tmp_path)
    run_chain("grow", tmp_path / "run", registry=Registry.load([catalog]), overrides=["stages.*.epochs=1"])
    return catalog, tmp_path / "run"


def test_resume_refuses_a_finished_step_whose_checkpoint_changed(zoo, finished_chain):
    catalog, run = finished_chain
    best = run / "01-two" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes() + b"\0")
    result = zoo("--registry", catalog, "chain", "grow", "--run-dir", run, "--resume", "--set", "stages.*.epochs=1")
    assert result.code == 2
    assert "best.pt: changed since step 1 ('two') finished" in result.err and "restore it" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_resume_refuses_a_finished_step_whose_checkpoint_was_deleted(zoo, finished_chain):
    catalog, run = finished_chain
    (run / "02-three" / "checkpoints" / "best.pt").unlink()
    result = zoo("--registry", catalog, "chain", "grow", "--run-dir", run, "--resume", "--set", "stages.*.epochs=1")
    assert result.code == 2 and "best.pt: deleted since step 2 ('three') finished" in result.err


def test_a_second_run_in_a_chain_folder_without_resume_is_refused(zoo, finished_chain):
    catalog, run = finished_chain
    result = zoo("--registry", catalog, "chain", "grow", "--run-dir", run, "--set", "stages.*.epochs=1")
    assert result.code == 2 and "pass --resume" in result.err


def test_resuming_a_finished_chain_trains_nothing(finished_chain):
    catalog, run = finished_chain
    before = (run / "03-four" / "checkpoints" / "last.pt").stat().st_mtime_ns
    record = run_chain("grow", run, registry=Registry.load([catalog]), overrides=["stages.*.epochs=1"], resume=True)
    assert record["status"] == "finished"
    assert (run / "03-four" / "checkpoints" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ('[[chains.grow.steps]]\nname = "x"\ndata = "DATA"\nrecipe = "no-such-recipe"\n', "step 3 ('x'): unknown recipe 'no-such-recipe'"),
        ('[[chains.grow.steps]]\nname = "x"\ndata = "MISSING"\n', "step 3 ('x'): MISSING: no such data folder or file"),
        ('[[chains.grow.steps]]\nname = "x"\ndata = "DATA"\ndata_format = "csvv"\n', "step 3 ('x'): --data-format: unknown classification data format 'csvv' - did you mean 'csv'"),
        ('[[chains.grow.steps]]\nname = "x"\ndata = "bundled:digitz"\n', "step 3 ('x'): bundled:digitz: no bundled data set 'digitz' - did you mean 'digits'"),
        ('[[chains.grow.steps]]\nname = "x"\ndata = "DATA"\nclasses = ["class0", "nope"]\n', "step 3 ('x'): --classes"),
    ],
)
def test_a_bad_step_is_refused_before_any_step_trains(zoo, tmp_path, step, message):
    catalog = _chain_toml(tmp_path, extra_step=step.replace("DATA", str(tmp_path / "a")).replace("MISSING", str(tmp_path / "none")))
    result = zoo("--registry", catalog, "chain", "grow", "--run-dir", tmp_path / "run")
    assert result.code == 2 and message.replace("MISSING", str(tmp_path / "none")) in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "01-two").exists()


# --- lineage ------------------------------------------------------------------------------------------


def test_lineage_walks_back_to_the_start_and_verifies_each_checkpoint(zoo, finished_chain):
    _, run = finished_chain
    result = zoo("lineage", run / "03-four" / "checkpoints" / "best.pt", "--json")
    assert result.code == 0, result.err
    lineage = json.loads(result.out)
    kinds = [(entry["kind"], entry["status"]) for entry in lineage["ancestors"]]
    assert kinds == [("checkpoint", "verified"), ("checkpoint", "verified"), ("random", "verified")]
    assert lineage["ancestors"][0]["path"].endswith("02-three/checkpoints/best.pt")
    assert lineage["ancestors"][1]["recipe"] == "from-scratch" and lineage["ancestors"][1]["classes"] == 2
    text = zoo("lineage", run / "03-four" / "checkpoints" / "best.pt")
    assert text.code == 0 and "random initialisation" in text.out


def test_lineage_marks_missing_and_changed_ancestors(zoo, finished_chain):
    _, run = finished_chain
    shutil.move(run / "01-two" / "checkpoints" / "best.pt", run / "moved.pt")
    middle = run / "02-three" / "checkpoints" / "best.pt"
    middle.write_bytes(middle.read_bytes() + b"\0")
    result = zoo("lineage", run / "03-four" / "checkpoints" / "best.pt", "--json")
    assert result.code == 1
    statuses = [entry["status"] for entry in json.loads(result.out)["ancestors"]]
    assert statuses == ["changed", "missing", "verified"]
    text = zoo("lineage", run / "03-four" / "checkpoints" / "best.pt")
    assert "CHANGED" in text.out and "MISSING" in text.out


def test_lineage_survives_export_to_safetensors(zoo, finished_chain, tmp_path):
    _, run = finished_chain
    out = tmp_path / "final.safetensors"
    assert zoo("export", run / "03-four" / "checkpoints" / "best.pt", "-o", out).code == 0
    lineage = json.loads(zoo("lineage", out, "--json").out)
    assert [entry["status"] for entry in lineage["ancestors"]] == ["verified", "verified", "verified"]


def test_lineage_of_a_file_without_provenance_says_so(zoo, tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    result = zoo("lineage", plain)
    assert result.code == 0 and result.out.strip().endswith("has no provenance (not written by Zoo); its ancestry is unknown")
    assert len(result.out.strip().splitlines()) == 1


def test_lineage_ends_at_the_pretrained_source_with_its_hash(zoo, tmp_path, image_folder):
    import hashlib

    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert zoo("import", "timm:resnet10t.c3_in1k", weights).code == 0
    run = tmp_path / "run"
    trained = zoo("finetune", "--recipe", "full-finetune", "--model", "timm:resnet10t.c3_in1k", "--data", image_folder,
                  "--run-dir", run, "--image-size", "32", "--set", "stages.0.epochs=1")  # fmt: skip
    assert trained.code == 0, trained.err
    (origin,) = json.loads(zoo("lineage", run / "checkpoints" / "best.pt", "--json").out)["ancestors"]
    assert (origin["kind"], origin["name"], origin["sha256"], origin["status"]) == ("pretrained", "timm:resnet10t.c3_in1k", digest, "verified")
    shown = zoo("lineage", run / "checkpoints" / "best.pt")
    assert "timm:resnet10t.c3_in1k" in shown.out and digest[:12] in shown.out


@pytest.mark.slow
def test_the_digits_chain_runs_end_to_end_with_its_table(zoo_subprocess, tmp_path):
    result = zoo_subprocess("chain", "digits-progressive", "--run-dir", tmp_path / "digits", "--compare-scratch", timeout=900)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "digits" / "chain.json").read_text())
    assert [(s["classes"], s["images"]["train"] + s["images"]["val"]) for s in record["steps"]] == [(2, 360), (5, 901), (10, 1797)]
    assert all(step["transfer"]["best"] > 0.9 for step in record["steps"])
    assert "3 ten" in result.stdout and "fresh, from random initialisation" in result.stdout
