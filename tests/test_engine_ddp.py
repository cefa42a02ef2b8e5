"""``zoo finetune --nproc 2``: real torchrun, gloo on the CPU.

A head-only recipe over a frozen trunk (frozen BatchNorm) in two processes matches one process
at the same global batch within floating-point tolerance, and only rank 0 writes and logs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_image_folder

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MODEL = "timm:test_resnet"
# 24 training images: batches of 8 (4 per process) split evenly, so no sampler padding
ARGS = (
    "--recipe",
    "linear-probe",
    "--model",
    MODEL,
    "--no-pretrained",
    "--image-size",
    "32",
    "--set",
    "batch_size=8",
    "--set",
    "stages.0.epochs=2",
)


def zoo_process(*argv: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo_core", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
        check=False,
    )


@pytest.fixture(scope="module")
def data(workspace: Path) -> Path:
    return write_image_folder(workspace / "data", classes=3, per_class=8)


class Run:
    def __init__(self, result: subprocess.CompletedProcess, run_dir: Path) -> None:
        self.returncode, self.stdout, self.stderr, self.run_dir = (
            result.returncode,
            result.stdout,
            result.stderr,
            run_dir,
        )


@pytest.fixture(scope="module")
def runs(workspace: Path, data: Path) -> dict[tuple[str, int], Run]:
    """One run per mode: 1 process and 2 processes, with and without the feature cache."""
    results = {}
    for cache in ("cached", "uncached"):
        extra = ("--no-cache",) if cache == "uncached" else ()
        for nproc in (1, 2):
            run_dir = workspace / f"{cache}-{nproc}"
            result = zoo_process("finetune", *ARGS, *extra, "--data", data, "--run-dir", run_dir, "--nproc", nproc)
            results[cache, nproc] = Run(result, run_dir)
    return results


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model_state_dict"]


def files(run_dir: Path) -> set[str]:
    """The run folder's files; TensorBoard event files are named by time and pid, so only their folder counts."""
    names = set()
    for path in run_dir.rglob("*"):
        if path.is_file():
            relative = path.relative_to(run_dir)
            names.add("tensorboard/EVENTS" if relative.parts[0] == "tensorboard" else str(relative))
    return names


@pytest.mark.parametrize("cache", ["cached", "uncached"])
def test_two_process_run_matches_one_process_run(runs, cache):
    one, two = runs[cache, 1], runs[cache, 2]
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    ours, theirs = final_weights(two.run_dir), final_weights(one.run_dir)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.allclose(ours[key].double(), theirs[key].double(), rtol=0, atol=1e-5), key
    previous = torch.load(two.run_dir / "checkpoints" / "last.prev.pt", weights_only=True)["model_state_dict"]
    assert not torch.equal(previous["fc.weight"], ours["fc.weight"])  # it did train


@pytest.mark.parametrize("cache", ["cached", "uncached"])
def test_two_process_run_reports_the_metrics_of_one_process(runs, cache):
    rows = {
        nproc: [json.loads(line) for line in (runs[cache, nproc].run_dir / "metrics.jsonl").read_text().splitlines()]
        for nproc in (1, 2)
    }
    assert len(rows[2]) == len(rows[1]) == 2
    for two, one in zip(rows[2], rows[1], strict=True):
        assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
        assert two["step"] == one["step"] == 3 * (two["epoch"] + 1)  # global batches: 24 images / 8


def test_only_rank_zero_writes_the_run_folder(runs):
    one, two = runs["cached", 1].run_dir, runs["cached", 2].run_dir
    assert files(two) == files(one)
    assert len(list((two / "tensorboard").iterdir())) == 1  # one writer: rank 0
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2


def test_only_rank_zero_logs(runs):
    err = runs["cached", 2].stderr
    epochs = re.findall(r"^zoo: INFO: stage 0 \(probe\) epoch \d/2 ", err, flags=re.MULTILINE)
    assert len(epochs) == 2, err
    assert len(re.findall(r"^zoo: INFO: stage 0: training ", err, flags=re.MULTILINE)) == 1, err
    assert runs["cached", 2].stdout.count("run folder ") == 1


def test_batch_that_does_not_split_over_the_processes_is_refused(workspace, data):
    result = zoo_process(
        "finetune", *ARGS, "--set", "batch_size=7", "--data", data, "--run-dir", workspace / "odd", "--nproc", 2
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "zoo: error: recipe 'linear-probe' stages[0]: batch size 7 does not split over 2 processes; "
        "use a multiple of 2 (--set batch_size=...)"
    ]
    assert not (workspace / "odd").exists()
