"""Exact resume on the CPU: a run interrupted in the middle of stage 1 and resumed with
``--resume`` ends with weights ``torch.equal`` to a run that was never interrupted.

Interruptions: a throwaway plugin whose ``zoo_on_epoch_end`` raises ``KeyboardInterrupt`` (as
Ctrl-C would), and ``SIGKILL`` of a real ``python -m zoo_core finetune`` process. Also: resuming
with another recipe or model is refused, a corrupt ``last.pt`` falls back to the previous good
one, and a new run never overwrites a folder that holds one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import InterruptAt, nested_tensors, write_image_folder

MODEL = "timm:test_resnet"
RECIPE = "multigriddet-full"
OVERRIDES = ("stages.*.epochs=2", "batch_size=8")  # stages 0, 1, 2 run epochs 0-1, 2-3, 4-5
ARGS = (
    "--recipe",
    RECIPE,
    "--model",
    MODEL,
    "--no-pretrained",
    "--image-size",
    "32",
    *(f"--set={o}" for o in OVERRIDES),
)


def registry_with(*plugins: Any) -> Any:
    """A registry on a fresh plugin manager: the installed plugins plus throwaway ones."""
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import PluginHost
    from zoo_core.registry import Registry

    host = PluginHost()
    host.load_entry_points()
    for index, plugin in enumerate(plugins):
        host.register(plugin, name=f"throwaway-{index}")
    return Registry(host, load_catalog())


def run_api(data: Path, run_dir: Path, **kwargs: Any) -> Any:
    from zoo_core.engine.api import finetune

    return finetune(
        RECIPE, MODEL, data, run_dir=run_dir, overrides=list(OVERRIDES), pretrained=False, image_size=32, **kwargs
    )


def interrupted_at(data: Path, run_dir: Path, epoch: int) -> Path:
    with pytest.raises(KeyboardInterrupt):
        run_api(data, run_dir, registry=registry_with(InterruptAt(epoch)))
    return run_dir


def assert_same_final_state(run_dir: Path, reference: Path) -> None:
    ours = dict(nested_tensors(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)))
    theirs = dict(nested_tensors(torch.load(reference / "checkpoints" / "last.pt", weights_only=True)))
    assert ours.keys() == theirs.keys()
    different = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
    assert not different, different[:10]
    assert any(key.startswith("/model_state_dict/") for key in ours) and any(
        key.startswith("/optimizer_state_dict/") for key in ours
    )


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if "seconds" not in key} for row in rows]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- shared runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(workspace: Path) -> Path:
    return write_image_folder(workspace / "data", classes=3, per_class=8)


@pytest.fixture(scope="module")
def reference(workspace: Path, data: Path) -> Path:
    """The same run, never interrupted."""
    run_api(data, workspace / "reference")
    return workspace / "reference"


@pytest.fixture(scope="module")
def interrupted(workspace: Path, data: Path) -> Path:
    """Interrupted after epoch 2: in the middle of stage 1 (epochs 2 and 3)."""
    return interrupted_at(data, workspace / "interrupted", epoch=2)


@pytest.fixture
def interrupted_copy(interrupted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(interrupted, tmp_path / "run"))


# --- exact resume ----------------------------------------------------------------------------------------


def test_interrupted_run_stopped_in_the_middle_of_stage_1(interrupted):
    last = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)
    assert (last["stage"], last["epoch_in_stage"], last["epoch"]) == (1, 1, 3)
    assert [row["epoch"] for row in metric_rows(interrupted)] == [1, 2, 3]


def test_resume_after_an_interrupt_ends_with_the_same_weights(zoo, interrupted_copy, reference, data):
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy, "--resume")
    assert result.code == 0, result
    assert_same_final_state(interrupted_copy, reference)


def test_resume_runs_only_the_epochs_left(zoo, interrupted_copy, data):
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy, "--resume")
    assert "resumed at stage 1, epoch 2 of that stage (3 epochs done)" in result.err
    epochs = re.findall(r"^zoo: INFO: stage (\d) \((\w+)\) epoch (\d)/2 ", result.err, flags=re.MULTILINE)
    assert epochs == [("1", "neck", "2"), ("2", "all", "1"), ("2", "all", "2")]


def test_resumed_run_reports_the_same_metrics(zoo, interrupted_copy, reference, data):
    assert zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy, "--resume").code == 0
    assert metric_rows(interrupted_copy) == metric_rows(reference)


@pytest.mark.slow
def test_resume_from_a_stage_boundary_ends_with_the_same_weights(reference, data, tmp_path):
    run_dir = interrupted_at(data, tmp_path / "run", epoch=1)  # the last epoch of stage 0
    run_api(data, run_dir, resume=True)
    assert_same_final_state(run_dir, reference)


@pytest.mark.slow
def test_resume_after_sigkill_ends_with_the_same_weights(zoo, reference, data, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "zoo_core", "finetune", *ARGS, "--data", str(data), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", run_dir, "--resume")
    assert result.code == 0, result
    done = re.search(r"resumed at stage \d, epoch \d of that stage \((\d) epochs done\)", result.err)
    assert done and 2 <= int(done.group(1)) < 6, result.err  # killed after the third epoch, before the end
    assert_same_final_state(run_dir, reference)
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2, 3, 4, 5, 6]


# --- what --resume refuses, and what it falls back to -----------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("--recipe", "linear-probe"),
            "--resume of a run made with recipe 'multigriddet-full', but this command uses 'linear-probe'",
        ),
        (
            ("--model", "timm:test_efficientnet"),
            f"--resume of a run made with model '{MODEL}', but this command uses 'timm:test_efficientnet'",
        ),
        (("--set", "stages.2.lr=1e-5"), "--resume of a run made with other values of recipe 'multigriddet-full'"),
    ],
    ids=["recipe", "model", "recipe-values"],
)
def test_resume_with_another_recipe_or_model_is_refused_untouched(zoo, interrupted_copy, data, change, message):
    before = snapshot(interrupted_copy)
    result = zoo("finetune", *ARGS, *change, "--data", data, "--run-dir", interrupted_copy, "--resume")
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"zoo: error: {interrupted_copy}: ") and message in line
    assert snapshot(interrupted_copy) == before


def test_resume_without_a_run_is_refused(zoo, data, tmp_path):
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", tmp_path / "nothing", "--resume")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"zoo: error: {tmp_path / 'nothing'}: nothing to resume (no run.json); drop --resume to start a new run"
    ]
    assert not (tmp_path / "nothing").exists()


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one_and_says_so(zoo, interrupted_copy, reference, data):
    last = interrupted_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy, "--resume")
    assert result.code == 0, result
    (warning,) = [line for line in result.err.splitlines() if "previous good checkpoint" in line]
    assert "last.pt: truncated or corrupt checkpoint" in warning
    assert "resuming from the previous good checkpoint last.prev.pt instead" in warning
    assert_same_final_state(interrupted_copy, reference)
    assert [row["epoch"] for row in metric_rows(interrupted_copy)] == [1, 2, 3, 4, 5, 6]


def test_every_checkpoint_corrupt_is_refused(zoo, interrupted_copy, data):
    for path in (interrupted_copy / "checkpoints").glob("*.pt"):
        path.write_bytes(b"not a checkpoint")
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy, "--resume")
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"zoo: error: {interrupted_copy}: no loadable checkpoint to resume from")


def test_new_run_in_a_folder_that_holds_one_is_refused_untouched(zoo, interrupted_copy, data):
    before = snapshot(interrupted_copy)
    result = zoo("finetune", *ARGS, "--data", data, "--run-dir", interrupted_copy)
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert line == (
        f"zoo: error: {interrupted_copy}: already holds a run (recipe 'multigriddet-full', model {MODEL}); "
        "continue it with --resume, or choose another --run-dir"
    )
    assert snapshot(interrupted_copy) == before
