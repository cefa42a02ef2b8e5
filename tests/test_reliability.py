"""Faults a user's bad day brings, injected for real: corrupt and foreign files, broken plugins,
two processes on one run folder, a T5 checkpoint carried into T5, and values that make no sense.

Each test fails without the fix it names; the README's "Reliability" table points here.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import assert_one_error, folder_snapshot, write_image_folder

from zoo_core import hookimpl
from zoo_core.errors import CheckpointError
from zoo_core.integrity import FileKind, sniff

CLASSES = "class0,class1,class2"


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def zoo_checkpoint(tiny_checkpoint, tmp_path: Path, zoo) -> Path:
    """A checkpoint Zoo wrote (provenance names its model and classes), 3 classes."""
    source = tiny_checkpoint("test_resnet", num_classes=3)
    output = tmp_path / "start.pt"
    result = zoo("transfer", source, "--to", "timm:test_resnet", "--classes", CLASSES, "-o", output)
    assert result.code == 0, result
    return output


# --- 3. one flipped byte inside a .pt is refused wherever a checkpoint is read ------------------------


def test_a_flipped_byte_is_refused_by_eval(zoo_checkpoint: Path, tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data")
    assert zoo("eval", zoo_checkpoint, "--data", data).code == 0
    flip_middle_byte(zoo_checkpoint)

    assert_one_error(zoo("eval", zoo_checkpoint, "--data", data), "start.pt", "corrupt checkpoint")


def test_a_flipped_byte_is_refused_by_transfer(zoo_checkpoint: Path, zoo) -> None:
    flip_middle_byte(zoo_checkpoint)

    assert_one_error(zoo("transfer", zoo_checkpoint, "--to", "timm:test_resnet", "--plan"), "start.pt", "corrupt checkpoint")


def test_a_flipped_byte_is_refused_by_finetune_and_no_run_folder_is_left(zoo_checkpoint: Path, tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data")
    flip_middle_byte(zoo_checkpoint)

    result = zoo(
        "finetune", "--recipe", "linear-probe", "--model", f"file:{zoo_checkpoint}", "--data", data,
        "--image-size", "32", "--run-dir", tmp_path / "run",
    )

    assert_one_error(result, "start.pt", "corrupt checkpoint")
    assert not (tmp_path / "run").exists()


def test_a_flipped_byte_is_refused_by_export_and_nothing_is_written(zoo_checkpoint: Path, tmp_path: Path, zoo) -> None:
    flip_middle_byte(zoo_checkpoint)

    assert_one_error(zoo("export", zoo_checkpoint, "-o", tmp_path / "out.safetensors"), "start.pt", "corrupt checkpoint")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_corrupt_entry_is_named(zoo_checkpoint: Path) -> None:
    from zoo_core.checkpoint import read_checkpoint

    flip_middle_byte(zoo_checkpoint)

    with pytest.raises(CheckpointError, match=r"the bytes of '[^']+/data/\d+' no longer match"):
        read_checkpoint(zoo_checkpoint)


def test_a_resumed_run_falls_back_past_a_corrupt_last_checkpoint(tmp_path: Path) -> None:
    from zoo_core.engine.rundir import RunFolder

    folder = RunFolder(tmp_path / "run")
    good = {"model_state_dict": {"w": torch.ones(64, 64)}, "epoch": 1}
    folder.save("last", good)
    folder.save("last", {**good, "epoch": 2})
    flip_middle_byte(folder.last())

    content, path = folder.resume_checkpoint()

    assert path.name == "last.prev.pt" and content["epoch"] == 1


# --- 9. a file that is not a checkpoint says what it is ---------------------------------------------------


FOREIGN = {
    "text": (b"hello\n", FileKind.TEXT, "is a text file (it starts with 'hello')"),
    "html": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", FileKind.HTML, "is an HTML page"),
    "json": (b'{"error": "not found"}', FileKind.JSON, "is a JSON document"),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", FileKind.LFS_POINTER, "git lfs pull"),
    "empty": (b"", FileKind.EMPTY, "is empty (0 bytes)"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_foreign_file_given_as_a_checkpoint_is_one_line_saying_what_it_is(kind: str, tmp_path: Path, zoo) -> None:
    content, expected_kind, fragment = FOREIGN[kind]
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    assert sniff(path) is expected_kind

    line = assert_one_error(zoo("transfer", path, "--to", "timm:test_resnet", "--plan"), "x.pth", fragment)

    assert "weights_only" not in line  # torch's own advice to unpickle unsafely never reaches the user


def test_importing_a_text_file_is_one_line_and_pins_nothing(tmp_path: Path, zoo) -> None:
    path = tmp_path / "x.pt"
    path.write_text("hello\n")

    assert_one_error(zoo("import", "timm:resnet10t.c3_in1k", path), "x.pt", "is a text file")
    assert not (Path(os.environ["ZOO_HOME"]) / "zoo.lock").exists()


def test_a_safetensors_file_with_a_pt_suffix_is_named_as_such(tmp_path: Path, zoo) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.pt"
    save_file({"w": torch.ones(2)}, str(path))

    assert_one_error(zoo("transfer", path, "--to", "timm:test_resnet", "--plan"), "weights.pt", "rename it to end in .safetensors")


def test_a_damaged_pickle_is_one_line_whatever_the_unpickler_raises(tmp_path: Path, zoo) -> None:
    path = tmp_path / "legacy.pt"
    path.write_bytes(b"\x80\x02" + struct.pack("<I", 7) + b"garbage that is no pickle")
    snapshot = folder_snapshot(tmp_path)

    assert_one_error(zoo("transfer", path, "--to", "timm:test_resnet", "--plan"), "legacy.pt")
    assert folder_snapshot(tmp_path) == snapshot


# --- 7. two processes on one run folder: one runs, the other is refused naming the holder ------------------

BARRIER = '''"""Test plugin: hold every process at its first layer-groups call until all have arrived."""
import os
import time
from pathlib import Path

from zoo_core import hookimpl

_waited = False


@hookimpl(tryfirst=True)
def zoo_layer_groups(model, spec, granularity):
    global _waited
    if not _waited:
        _waited = True
        folder = Path(os.environ["ZOO_TEST_BARRIER"])
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(folder.iterdir())) < int(os.environ["ZOO_TEST_BARRIER_COUNT"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    return None
'''

TWO_RUN_ARGS = ("--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--image-size", "32",
                "--set", "stages.0.epochs=3", "--set", "batch_size=8", "--no-cache")


def fake_distribution(site: Path, module: str, source: str) -> Path:
    """``site`` holds ``module`` as an installed distribution in the ``zoo`` entry-point group."""
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{module} = {module}\n")
    return site


class InterruptAfterFirstEpoch:
    @hookimpl
    def zoo_on_epoch_end(self, run, epoch, metrics):
        raise KeyboardInterrupt


def interrupted_after_first_epoch(data: Path, run_dir: Path) -> None:
    from zoo_core.catalog import load_catalog
    from zoo_core.cli import build_parser
    from zoo_core.engine.api import finetune
    from zoo_core.plugins import PluginHost
    from zoo_core.registry import Registry

    args = build_parser().parse_args(["finetune", *TWO_RUN_ARGS, "--data", str(data)])
    host = PluginHost()
    host.load_entry_points()
    host.register(InterruptAfterFirstEpoch(), name="interrupt")
    with pytest.raises(KeyboardInterrupt):
        finetune(args.recipe, args.model, data, run_dir=run_dir, overrides=args.set, pretrained=False, image_size=32,
                 use_cache=False, registry=Registry(host, load_catalog()))


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["two-new-runs", "two-resumes"])
def test_two_processes_on_one_run_folder_one_runs_the_other_is_refused(resume: bool, tmp_path: Path, zoo) -> None:
    import json
    import subprocess
    import sys

    data = write_image_folder(tmp_path / "data", per_class=8)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "zoo_core", "finetune", *TWO_RUN_ARGS, "--data", str(data), "--run-dir", str(run_dir)]
    if resume:
        interrupted_after_first_epoch(data, run_dir)
        argv.append("--resume")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    site = fake_distribution(tmp_path / "site", "zoo_test_barrier", BARRIER)
    env = {**os.environ, "ZOO_TEST_BARRIER": str(barrier), "ZOO_TEST_BARRIER_COUNT": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))}

    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outcomes = sorted((process.wait(timeout=600), process.stderr.read()) for process in processes)

    (ok_code, _), (refused_code, refused_err) = outcomes
    assert (ok_code, refused_code) == (0, 2), outcomes
    errors = [line for line in refused_err.splitlines() if line.startswith("zoo: error: ")]
    assert len(errors) == 1 and "Traceback" not in refused_err, refused_err
    assert f"{run_dir}: this run folder is in use by pid " in errors[0] and "choose another --run-dir" in errors[0]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


# --- 6. a plugin whose hook raises is isolated like one that fails to import -----------------------------

RAISING = '''"""Test plugin: a source that works and a tier hook that raises."""
from zoo_core import hookimpl


@hookimpl
def zoo_register_tiers(register):
    raise RuntimeError("the family table is corrupt")


@hookimpl
def zoo_register_recipes(register):
    register({"name": "broken-plugin-recipe", "stages": [{"epochs": 1, "lr": 1e-3}]})
'''


@pytest.fixture
def raising_plugin(tmp_path: Path, on_path) -> None:
    on_path(fake_distribution(tmp_path / "site", "zoo_test_raising", RAISING))


def test_a_raising_hook_leaves_list_and_tiers_working(raising_plugin, zoo) -> None:
    listed = zoo("list", "maxsight/*")
    tiers = zoo("tiers")

    assert listed.code == 0 and "maxsight/t5" in listed.out, listed
    assert tiers.code == 0 and "maxsight" in tiers.out and "lite" in tiers.out, tiers
    assert "zoo_test_raising" in tiers.err and "RuntimeError: the family table is corrupt" in tiers.err


def test_the_raising_plugins_other_hooks_still_work(raising_plugin, zoo) -> None:
    result = zoo("recipes", "broken-plugin-recipe")

    assert result.code == 0, result


def test_zoo_plugins_reports_the_raising_hook_with_its_reason(raising_plugin, zoo) -> None:
    import json

    result = zoo("plugins", "--json")

    assert result.code == 0, result
    (record,) = [record for record in json.loads(result.out) if record["name"] == "zoo_test_raising"]
    assert record["status"] == "failed"
    assert record["error"] == "failed in zoo_register_tiers: RuntimeError: the family table is corrupt"
    assert {r["name"]: r["status"] for r in json.loads(result.out)}["maxsight"] == "loaded"


def test_a_command_that_needed_the_failed_hook_names_the_plugin(raising_plugin, zoo) -> None:
    assert_one_error(
        zoo("tiers", "acme"),
        "unknown tier family 'acme'",
        "plugin 'zoo_test_raising' failed in zoo_register_tiers: RuntimeError: the family table is corrupt",
    )


# --- 8. a checkpoint carried into its own architecture keeps every tensor ----------------------------------


def test_a_t5_checkpoint_keeps_its_temporal_encoder_through_finetune(tmp_path: Path, zoo) -> None:
    from zoo_core.checkpoint import save_checkpoint
    from zoo_core.models import create_model
    from zoo_core.provenance import make_provenance

    classes = CLASSES.split(",")
    model = create_model("maxsight/t5", num_classes=3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith("neck.temporal."):
                tensor.fill_(0.125)
    provenance = make_provenance(model="maxsight/t5", num_classes=3, class_names=classes)
    save_checkpoint({"model_state_dict": model.state_dict(), "epoch": 60, "val_loss": 0.5, "provenance": provenance}, tmp_path / "t5.pt")
    data = write_image_folder(tmp_path / "data", per_class=4)

    result = zoo(
        "finetune", "--recipe", "linear-probe", "--model", tmp_path / "t5.pt", "--data", data, "--image-size", "32",
        "--set", "stages.0.epochs=1", "--run-dir", tmp_path / "run",
    )

    assert result.code == 0, result
    assert "excluded by rules" not in result.out
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model_state_dict"]
    temporal = {name: tensor for name, tensor in last.items() if name.startswith("neck.temporal.")}
    assert temporal and all(bool((tensor == 0.125).all()) for tensor in temporal.values())


def test_family_rules_still_apply_between_two_tiers(tmp_path: Path) -> None:
    from zoo_core.checkpoint import save_checkpoint
    from zoo_core.models import create_model
    from zoo_core.plans import plan_transfer
    from zoo_core.provenance import make_provenance

    model = create_model("maxsight/t5", num_classes=3)
    provenance = make_provenance(model="maxsight/t4", num_classes=3)  # as if trained as a T4 …
    state = {k: v for k, v in model.state_dict().items()}
    save_checkpoint({"model_state_dict": state, "provenance": provenance}, tmp_path / "t4.pt")

    plan = plan_transfer(tmp_path / "t4.pt", "maxsight/t5", num_classes=3)

    excluded = {item.source for item in plan.unused if item.reason.value == "excluded"}
    assert excluded and all(name.startswith("neck.temporal.") for name in excluded)  # … so T4 -> T5 rules apply


# --- 10. values that make no sense are refused, never quietly replaced -------------------------------------


@pytest.mark.parametrize("size", ["0", "1", "-5", "abc"])
def test_a_nonsensical_image_size_is_one_line(size: str, tmp_path: Path, zoo) -> None:
    data = write_image_folder(tmp_path / "data")

    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained",
                 "--data", data, "--image-size", size, "--run-dir", tmp_path / "run")

    assert_one_error(result, "--image-size")
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_a_tiny_image_size_too(tmp_path: Path) -> None:
    from zoo_core.engine.api import finetune
    from zoo_core.errors import RunError

    with pytest.raises(RunError, match="image_size must be a whole number of at least 16 pixels, got 1"):
        finetune("linear-probe", "timm:test_resnet", write_image_folder(tmp_path / "data"), image_size=1, pretrained=False)


@pytest.mark.parametrize("argv", [("transfer", "timm:test_resnet", "--to", "timm:test_resnet", "--plan"), ("info", "timm:test_resnet")])
def test_zero_classes_is_one_line(argv, zoo) -> None:
    assert_one_error(zoo(*argv, "--num-classes", "0"), "--num-classes", "at least 1")


@pytest.mark.parametrize("classes, fragment", [("a,a,b", "names 'a' more than once"), ("a,,b", "a class name is empty")])
def test_bad_class_lists_are_one_line(classes: str, fragment: str, zoo) -> None:
    assert_one_error(zoo("transfer", "timm:test_resnet", "--to", "timm:test_resnet", "--classes", classes, "--plan"), fragment)


def test_a_class_missing_from_val_is_one_warning_and_the_run_goes_on(tmp_path: Path, zoo) -> None:
    import shutil

    data = write_image_folder(tmp_path / "data")
    shutil.rmtree(data / "val" / "class2")

    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--data", data,
                 "--image-size", "32", "--set", "stages.0.epochs=1", "--run-dir", tmp_path / "run")

    assert result.code == 0, result
    (warning,) = [line for line in result.err.splitlines() if "class2" in line and not line.startswith("zoo: INFO: ")]  # the summary's counts aside
    assert warning.startswith("zoo: WARNING: ") and "no images of class 'class2'" in warning
