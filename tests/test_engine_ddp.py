"""``zoo finetune --nproc 2``: real torchrun, gloo on the CPU.

A head-only recipe over a frozen trunk (frozen BatchNorm) in two processes matches one process
at the same global batch within floating-point tolerance, and only rank 0 writes and logs. A
run that fails says so once, in Zoo's words and with Zoo's exit status, not torchrun's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
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


def zoo_process(*argv: Any, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo_core", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
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
        assert two["step"] == one["step"] == 3 * two["epoch"]  # global batches: 24 images / 8


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


def assert_one_process_error(result: subprocess.CompletedProcess, *fragments: str) -> list[str]:
    """``assert_one_error`` for a ``--nproc`` run: rank 0's log lines may come first; the error is the last line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert [line for line in lines if line.startswith("zoo: error: ")] == lines[-1:], result.stderr
    assert all(line.startswith("zoo: ") for line in lines), result.stderr  # no torchrun or worker noise
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines


# overrides after ARGS, and what the error says
DIVERGING = {
    # the loss is all-reduced, so every rank skips the same steps and the guard stops them together
    "guard": (("batch_size=4", "stages.0.lr=1e6"), "stage 0 epoch 2: 3 non-finite losses in a row; stopped"),
    # only rank 0 saves, and it refuses NaN weights; rank 1 loses its peer at the barrier after the save
    "checkpoint": (("stages.0.lr=1e30",), "(weights after epoch 1): NaN or infinite values in fc.weight"),
}


@pytest.mark.parametrize("case", DIVERGING)
def test_diverging_run_reports_one_error_with_status_2(workspace, data, case):
    overrides, message = DIVERGING[case]
    sets = [arg for value in overrides for arg in ("--set", value)]
    run_dir = workspace / f"diverging-{case}"
    result = zoo_process("finetune", *ARGS, *sets, "--data", data, "--run-dir", run_dir, "--nproc", 2)
    lines = assert_one_process_error(result, message)
    warnings = [line for line in lines if line.startswith("zoo: WARNING: ")]
    assert warnings and all("non-finite loss" in line for line in warnings), result.stderr
    assert len(set(warnings)) == len(warnings), result.stderr  # rank 0's, once each; not once per rank


def test_worker_killed_by_a_signal_is_named_in_one_error_line(workspace, data, tmp_path):
    crash = 'import os, signal\nif os.environ.get("RANK") == "1":\n    os.kill(os.getpid(), signal.SIGKILL)\n'
    (tmp_path / "sitecustomize.py").write_text(crash)  # every worker imports it; the launcher has no RANK
    env = {"PYTHONPATH": str(tmp_path), "TMPDIR": str(tmp_path)}  # the workers' logs land in TMPDIR
    result = zoo_process("finetune", *ARGS, "--data", data, "--run-dir", workspace / "killed", "--nproc", 2, **env)
    assert result.returncode == 128 + 9, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    named = re.fullmatch(r"zoo: error: rank 1 was killed by SIGKILL; its stderr is in (\S+/1/stderr\.log)", lines[0])
    assert named, lines
    assert Path(named[1]).is_file() and Path(named[1]).is_relative_to(tmp_path)


def test_ranks_other_than_zero_log_only_errors(monkeypatch):
    from zoo_core.cli import _configure_logging

    monkeypatch.setenv("RANK", "1")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        _configure_logging(verbose=True, debug=False)
    log = logging.getLogger("zoo_core.engine.rank_test")
    log.setLevel(logging.INFO)  # as `zoo finetune` does for the engine's loggers
    log.info("progress")
    log.warning("a warning")
    log.error("an error")
    assert err.getvalue() == "zoo: ERROR: an error\n"
