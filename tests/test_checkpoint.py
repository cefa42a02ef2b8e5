"""Checkpoint I/O: safe reading of the layouts found in the wild, validation, atomic saving, export.

Reading is always ``weights_only``: files that would run code are refused (and the tests prove
the code did not run), corrupt files are errors naming the file. Saving is atomic: a process
killed with SIGKILL in the middle of a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
from conftest import assert_same_tensors
from safetensors import safe_open
from safetensors.torch import save_file

from zoo_core.checkpoint import (
    KNOWN_PREFIXES,
    Checkpoint,
    nonfinite_tensors,
    read_checkpoint,
    save_checkpoint,
    save_safetensors,
    validate_training_checkpoint,
)
from zoo_core.errors import CheckpointError
from zoo_core.fileio import sha256_file
from zoo_core.provenance import make_provenance

# --- helpers -------------------------------------------------------------------------------------


def resnet_state(seed: int = 0, num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes).state_dict()




class RunsShellCommand:
    """A pickle payload: unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker}",))


def small_state() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "conv.bias": torch.randn(4),
        "bn.num_batches_tracked": torch.tensor(3),
    }


# --- layouts found in the wild -----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["model_state_dict", "state_dict", "model", "state_dict_ema"])
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_reads_the_state_dict_nested_under_each_common_key(tmp_path: Path, layout: str, suffix: str) -> None:
    state = small_state()
    path = tmp_path / f"ckpt{suffix}"
    torch.save({layout: state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)

    checkpoint = read_checkpoint(path)

    assert checkpoint.layout == layout
    assert checkpoint.format == "torch"
    assert_same_tensors(checkpoint.state_dict, state)
    assert checkpoint.meta["epoch"] == 7


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_reads_a_bare_state_dict(tmp_path: Path, suffix: str) -> None:
    state = resnet_state()
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path)

    checkpoint = read_checkpoint(path)

    assert checkpoint.layout == "bare"
    assert_same_tensors(checkpoint.state_dict, state)


def test_reads_a_safetensors_file_with_its_metadata(tmp_path: Path) -> None:
    state = resnet_state()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt", "author": "me"})

    checkpoint = read_checkpoint(path)

    assert checkpoint.format == "safetensors"
    assert_same_tensors(checkpoint.state_dict, state)
    assert checkpoint.meta["metadata"]["author"] == "me"


def test_model_state_dict_wins_over_an_ema_copy_saved_beside_it(tmp_path: Path) -> None:
    state, ema = resnet_state(0), resnet_state(1)
    path = tmp_path / "train.pt"
    torch.save({"state_dict_ema": ema, "model_state_dict": state, "epoch": 3}, path)

    checkpoint = read_checkpoint(path)

    assert checkpoint.layout == "model_state_dict"
    assert_same_tensors(checkpoint.state_dict, state)
    assert set(checkpoint.meta) == {"state_dict_ema", "epoch"}


def test_a_file_without_model_tensors_is_an_error_listing_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "opt.pt"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 1}, path)

    with pytest.raises(CheckpointError, match=r"opt\.pt: no model tensors found.*optimizer, epoch"):
        read_checkpoint(path)


# --- prefixes, stripped on request -------------------------------------------------------------------


def test_ddp_module_prefix_is_kept_unless_stripping_is_requested(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    wrapped = torch.nn.DataParallel(model)  # same "module." keys as DistributedDataParallel
    path = tmp_path / "ddp.pt"
    torch.save({"model_state_dict": wrapped.state_dict()}, path)

    assert all(key.startswith("module.") for key in read_checkpoint(path).state_dict)
    assert_same_tensors(read_checkpoint(path, strip=["module."]).state_dict, model.state_dict())


def test_torch_compile_prefix_is_stripped_on_request(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    compiled = torch.compile(model)  # wrapping is lazy: nothing is compiled until it is called
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)

    assert next(iter(read_checkpoint(path).state_dict)).startswith("_orig_mod.")
    assert_same_tensors(read_checkpoint(path, strip=["_orig_mod."]).state_dict, model.state_dict())


def test_lightning_model_prefix_is_stripped_on_request(tmp_path: Path) -> None:
    state = resnet_state()
    path = tmp_path / "lightning.ckpt.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 4, "global_step": 100}, path)

    checkpoint = read_checkpoint(path, strip=KNOWN_PREFIXES)

    assert_same_tensors(checkpoint.state_dict, state)


def test_stacked_prefixes_are_all_stripped(tmp_path: Path) -> None:
    state = small_state()
    path = tmp_path / "stacked.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)

    assert_same_tensors(read_checkpoint(path, strip=KNOWN_PREFIXES).state_dict, state)


def test_a_prefix_only_some_keys_carry_is_not_stripped(tmp_path: Path) -> None:
    state = {"model.conv.weight": torch.ones(2), "head.weight": torch.ones(3)}
    path = tmp_path / "mixed.pt"
    torch.save(state, path)

    assert sorted(read_checkpoint(path, strip=KNOWN_PREFIXES).state_dict) == ["head.weight", "model.conv.weight"]


# --- weights_only, always --------------------------------------------------------------------------------


def test_a_torch_saved_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": small_state(), "extra": RunsShellCommand(marker)}, path)

    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)

    assert not marker.exists()
    assert "evil.pt: refused to load" in str(caught.value)
    assert "posix.system" in str(caught.value)


def test_a_legacy_format_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "legacy.pth"
    torch.save({"w": RunsShellCommand(marker)}, path, _use_new_zipfile_serialization=False)

    with pytest.raises(CheckpointError, match=r"legacy\.pth: refused to load.*posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_plain_pickle_file_payload_is_refused_naming_its_global(tmp_path: Path) -> None:
    """``pickle.dump`` (protocol 4+) files are what most hand-rolled 'checkpoints' are."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"w": RunsShellCommand(marker)}, protocol=pickle.DEFAULT_PROTOCOL))

    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)

    assert not marker.exists()
    message = str(caught.value)
    assert "raw.pt: " in message
    assert "system" in message, f"the refused global is not named: {message}"
    assert "set to `False`" not in message, f"the message repeats torch's advice to load unsafely: {message}"


def test_a_payload_calling_a_method_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "touched"

    class TouchesMarker:
        def __reduce__(self):  # noqa: ANN204 - pickle protocol
            return (Path.touch, (marker,))

    path = tmp_path / "touch.pt"
    torch.save({"w": torch.ones(1), "x": TouchesMarker()}, path)

    with pytest.raises(CheckpointError, match=r"touch\.pt: refused to load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_a_non_allowlisted_global_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "with-args.pt"
    torch.save({"model_state_dict": small_state(), "args": argparse.Namespace(lr=0.1)}, path)

    with pytest.raises(
        CheckpointError, match=r"with-args\.pt: refused to load: it needs the global 'argparse\.Namespace'"
    ):
        read_checkpoint(path)


def test_allowlisted_containers_and_plain_values_load(tmp_path: Path) -> None:
    from collections import OrderedDict

    state = OrderedDict(small_state())
    path = tmp_path / "ok.pt"
    torch.save(
        {"model_state_dict": state, "epoch": 2, "val_loss": 0.5, "metrics": {"acc": [0.5, 0.7]}, "tag": None}, path
    )

    checkpoint = read_checkpoint(path)

    assert checkpoint.meta["metrics"] == {"acc": [0.5, 0.7]}
    assert_same_tensors(checkpoint.state_dict, state)


# --- corrupt files ---------------------------------------------------------------------------------------


def test_a_truncated_zip_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"model_state_dict": resnet_state()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or corrupt checkpoint"):
        read_checkpoint(path)


def test_a_safetensors_file_with_a_broken_header_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offs'
    path.write_bytes(struct.pack("<Q", len(header) + 10) + header)

    with pytest.raises(CheckpointError, match=r"broken\.safetensors: broken safetensors file"):
        read_checkpoint(path)


def test_a_safetensors_header_longer_than_the_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")

    with pytest.raises(CheckpointError, match=r"huge\.safetensors: broken safetensors file"):
        read_checkpoint(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nowhere.pt")


# --- validation (seed 000) -----------------------------------------------------------------------------


def training_checkpoint(tmp_path: Path, **content: object) -> Checkpoint:
    path = tmp_path / "train.pt"
    torch.save(content, path)
    return read_checkpoint(path)


def test_nan_and_inf_tensors_are_named(tmp_path: Path) -> None:
    state = small_state()
    state["conv.weight"][0, 0, 0, 0] = float("nan")
    state["conv.bias"][1] = float("inf")
    checkpoint = training_checkpoint(tmp_path, model_state_dict=state, epoch=80, val_loss=0.1)

    assert nonfinite_tensors(checkpoint.state_dict) == ["conv.weight", "conv.bias"]
    with pytest.raises(CheckpointError, match=r"train\.pt: NaN or infinite values in conv\.weight, conv\.bias"):
        validate_training_checkpoint(checkpoint)


def test_a_valid_training_checkpoint_passes_without_warnings(tmp_path: Path) -> None:
    checkpoint = training_checkpoint(tmp_path, model_state_dict=small_state(), epoch=80, val_loss=0.1)

    assert validate_training_checkpoint(checkpoint) == []


@pytest.mark.parametrize("missing", ["epoch", "val_loss"])
def test_a_training_checkpoint_missing_a_required_key_is_an_error_naming_it(tmp_path: Path, missing: str) -> None:
    content = {"model_state_dict": small_state(), "epoch": 80, "val_loss": 0.1}
    del content[missing]
    checkpoint = training_checkpoint(tmp_path, **content)

    with pytest.raises(CheckpointError, match=rf"train\.pt: missing required key\(s\) {missing}"):
        validate_training_checkpoint(checkpoint)


def test_a_bare_state_dict_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    checkpoint = training_checkpoint(tmp_path, **small_state())

    with pytest.raises(CheckpointError, match=r"train\.pt: a training checkpoint needs 'model_state_dict'"):
        validate_training_checkpoint(checkpoint)


def test_fewer_than_50_epochs_is_a_warning(tmp_path: Path) -> None:
    checkpoint = training_checkpoint(tmp_path, model_state_dict=small_state(), epoch=12, val_loss=0.1)

    warnings = validate_training_checkpoint(checkpoint)

    assert len(warnings) == 1
    assert "trained for only 12 epochs (< 50)" in warnings[0]


def test_the_epoch_threshold_is_configurable(tmp_path: Path) -> None:
    checkpoint = training_checkpoint(tmp_path, model_state_dict=small_state(), epoch=12, val_loss=0.1)

    assert validate_training_checkpoint(checkpoint, min_epochs=10) == []
    assert "(< 100)" in validate_training_checkpoint(checkpoint, min_epochs=100)[0]


# --- saving -----------------------------------------------------------------------------------------------


def test_saved_checkpoints_load_with_plain_torch_weights_only(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    state = resnet_state()
    provenance = make_provenance(model="timm:resnet10t", num_classes=5, class_names=list("abcde"))
    path = save_checkpoint(
        {"model_state_dict": state, "epoch": 3, "val_loss": 0.2, "provenance": provenance}, folder / "a.pt"
    )

    loaded = torch.load(path, weights_only=True)

    assert_same_tensors(loaded["model_state_dict"], state)
    assert loaded["provenance"]["class_names"] == list("abcde")
    assert loaded["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert list(folder.iterdir()) == [path]  # no temporary left behind


def test_saving_replaces_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model_state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    save_checkpoint({"model_state_dict": {"w": torch.ones(3)}, "epoch": 2}, path)

    checkpoint = read_checkpoint(path)

    assert checkpoint.meta["epoch"] == 2
    assert torch.equal(checkpoint.state_dict["w"], torch.ones(3))


def test_saved_files_get_the_permissions_a_plain_write_gets(tmp_path: Path) -> None:
    """Atomic saving must not make checkpoints private (mkstemp's 0600) when the umask allows sharing."""
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    atomic = save_checkpoint({"w": torch.ones(1)}, tmp_path / "atomic.pt")
    exported = save_safetensors({"w": torch.ones(1)}, tmp_path / "atomic.safetensors")

    expected = plain.stat().st_mode & 0o777
    assert atomic.stat().st_mode & 0o777 == expected
    assert exported.stat().st_mode & 0o777 == expected


SAVER = textwrap.dedent(
    """
    import sys, torch
    from zoo_core.checkpoint import save_checkpoint
    path = sys.argv[1]
    big = torch.empty(16 * 1024 * 1024)  # 64 MB: a save takes long enough to be caught in the middle
    version = 0
    while True:
        big.fill_(version)
        save_checkpoint({"model_state_dict": {"big": big, "version": torch.tensor(version)}, "epoch": version}, path)
        print(f"saved {version}", flush=True)
        version += 1
    """
)


def test_kill_9_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "ckpt.pt"
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "saved 0"
        deadline = time.monotonic() + 60
        while not list(folder.glob(".ckpt.pt.*.tmp")):  # the next save has started
            assert time.monotonic() < deadline, "the saver never started a second save"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == -signal.SIGKILL
    assert list(folder.glob(".ckpt.pt.*.tmp")), "the kill did not land in the middle of a save"
    checkpoint = read_checkpoint(path)
    version = int(checkpoint.state_dict["version"])
    assert checkpoint.meta["epoch"] == version
    assert torch.equal(checkpoint.state_dict["big"], torch.full((16 * 1024 * 1024,), float(version)))
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == ["ckpt.pt"]


# --- export ---------------------------------------------------------------------------------------------


def saved_training_checkpoint(path: Path, **extra: object) -> tuple[Path, dict[str, torch.Tensor]]:
    state = resnet_state()
    provenance = make_provenance(model="timm:resnet10t", num_classes=5, class_names=["a", "b", "c", "d", "e"])
    save_checkpoint({"model_state_dict": state, "epoch": 60, "val_loss": 0.3, "provenance": provenance, **extra}, path)
    return path, state


def test_save_export_load_round_trip_gives_equal_tensors_and_provenance(tmp_path: Path, zoo) -> None:
    ckpt, state = saved_training_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "best.safetensors"

    result = zoo("export", ckpt, "-o", out)

    assert result.code == 0, result
    exported = read_checkpoint(out)
    assert_same_tensors(exported.state_dict, state)
    assert exported.provenance["model"] == "timm:resnet10t"
    assert exported.provenance["class_names"] == ["a", "b", "c", "d", "e"]
    assert exported.provenance["exported_from"]["sha256"] == sha256_file(ckpt)
    assert exported.provenance["export"] == "model"


def test_exported_provenance_is_plain_safetensors_metadata(tmp_path: Path, zoo) -> None:
    ckpt, _ = saved_training_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "best.safetensors"

    assert zoo("export", ckpt, "-o", out).code == 0

    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["zoo.provenance"])["num_classes"] == 5


def test_export_backbone_only_writes_only_backbone_tensors(tmp_path: Path, zoo) -> None:
    ckpt, state = saved_training_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "backbone.safetensors"

    result = zoo("export", ckpt, "--backbone-only", "-o", out)

    assert result.code == 0, result
    exported = read_checkpoint(out)
    assert_same_tensors(exported.state_dict, {k: v for k, v in state.items() if not k.startswith("fc.")})
    assert exported.provenance["export"] == "backbone"


def test_export_backbone_only_without_provenance_is_an_error(tmp_path: Path, zoo) -> None:
    ckpt = tmp_path / "plain.pt"
    torch.save(resnet_state(), ckpt)
    out = tmp_path / "backbone.safetensors"

    result = zoo("export", ckpt, "--backbone-only", "-o", out)

    assert result.code == 2
    assert result.err.count("\n") == 1 and result.err.startswith("zoo: error: ")
    assert "plain.pt: --backbone-only needs provenance naming the model" in result.err
    assert not out.exists()


def test_export_to_a_non_safetensors_name_is_an_error(tmp_path: Path, zoo) -> None:
    ckpt, _ = saved_training_checkpoint(tmp_path / "best.pt")

    result = zoo("export", ckpt, "-o", tmp_path / "best.bin")

    assert result.code == 2
    assert result.err.startswith("zoo: error: -o ") and "OUT.safetensors" in result.err
    assert not (tmp_path / "best.bin").exists()


def test_export_refuses_an_unsafe_checkpoint_and_writes_nothing(tmp_path: Path, zoo) -> None:
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model_state_dict": small_state(), "x": RunsShellCommand(marker)}, ckpt)
    out = tmp_path / "evil.safetensors"

    result = zoo("export", ckpt, "-o", out)

    assert result.code == 2
    assert result.err.count("\n") == 1 and "evil.pt: refused to load" in result.err
    assert not marker.exists()
    assert not out.exists()


# --- the public API -------------------------------------------------------------------------------------


def test_zoo_load_checkpoint_returns_tensors_metadata_and_provenance(tmp_path: Path) -> None:
    import zoo_core as zoo

    ckpt, state = saved_training_checkpoint(tmp_path / "best.pt")

    checkpoint = zoo.load_checkpoint(ckpt)

    assert_same_tensors(checkpoint.state_dict, state)
    assert checkpoint.meta["epoch"] == 60
    assert checkpoint.provenance["model"] == "timm:resnet10t"
