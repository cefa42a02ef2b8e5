"""A kill between any two checkpoint writes loses nothing.

A plugin installed as a real distribution (a ``.dist-info`` on ``PYTHONPATH``) SIGKILLs its own
``zoo finetune`` process right after the N-th checkpoint write, for every N of a two-stage
run. After ``--resume``, every checkpoint in the run folder — ``last.pt``, ``best.pt`` and each
stage's — holds exactly the tensors and position of the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import nested_tensors, write_image_folder

import zoo_core

MODEL = "timm:test_resnet"
RECIPE = "multigriddet-backbone"
OVERRIDES = ("stages.0.epochs=2", "stages.1.epochs=1", "batch_size=8", "stages.*.augment={}")
KEEP = ("last", "best", "stages")  # every kind of checkpoint, so that a kill can follow each
ARGS = ("--recipe", RECIPE, "--model", MODEL, "--no-pretrained", "--image-size", "32", "--keep", ",".join(KEEP), *(f"--set={o}" for o in OVERRIDES))
POSITION_KEYS = ("epoch", "stage", "epoch_in_stage", "step", "val_loss")

KILLER = '''"""Test plugin: SIGKILL this process right after the N-th checkpoint write (N from the environment)."""
import os
import signal

from zoo_core import hookimpl

_writes = 0


@hookimpl
def zoo_on_checkpoint_saved(run, path, kind):
    global _writes
    _writes += 1
    if _writes == int(os.environ.get("ZOO_TEST_KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
'''


class CountWrites:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    @zoo_core.hookimpl
    def zoo_on_checkpoint_saved(self, run, path, kind):
        self.kinds.append(kind)


def checkpoints(run_dir: Path) -> dict[str, dict[str, Any]]:
    folder = run_dir / "checkpoints"
    return {path.name: torch.load(path, weights_only=True) for path in sorted(folder.glob("*.pt")) if path.name != "last.prev.pt"}


def assert_same_checkpoints(run_dir: Path, reference: Path, where: str) -> None:
    ours, theirs = checkpoints(run_dir), checkpoints(reference)
    assert sorted(ours) == sorted(theirs), where
    for name, expected in theirs.items():
        got = ours[name]
        assert {key: got.get(key) for key in POSITION_KEYS} == {key: expected.get(key) for key in POSITION_KEYS}, (where, name)
        mine, other = dict(nested_tensors(got)), dict(nested_tensors(expected))
        assert mine.keys() == other.keys(), (where, name)
        different = [key for key in other if not torch.equal(mine[key], other[key])]
        assert not different, (where, name, different[:5])


def run_api(data: Path, run_dir: Path, **kwargs: Any) -> Any:
    from zoo_core.engine.api import finetune

    return finetune(RECIPE, MODEL, data, run_dir=run_dir, overrides=list(OVERRIDES), pretrained=False, image_size=32, keep=KEEP, **kwargs)


@pytest.fixture(scope="module")
def data(workspace: Path) -> Path:
    return write_image_folder(workspace / "data", classes=3, per_class=8)


@pytest.fixture(scope="module")
def reference(workspace: Path, data: Path) -> tuple[Path, list[str]]:
    """The uninterrupted run, and the kinds of the checkpoints it wrote in order."""
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import PluginHost
    from zoo_core.registry import Registry

    counter = CountWrites()
    host = PluginHost()
    host.load_entry_points()
    host.register(counter, name="count-writes")
    run_api(data, workspace / "reference", registry=Registry(host, load_catalog()))
    return workspace / "reference", counter.kinds


@pytest.fixture(scope="module")
def killer(workspace: Path) -> Path:
    """A folder holding the killer plugin as an installed distribution, for PYTHONPATH."""
    site = workspace / "killer-site"
    (site / "zoo_test_killer-0.1.dist-info").mkdir(parents=True)
    (site / "zoo_test_killer.py").write_text(KILLER)
    info = site / "zoo_test_killer-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-test-killer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zoo]\nkiller = zoo_test_killer\n")
    return site


def test_the_run_writes_stage_best_and_last_checkpoints(reference) -> None:
    _, kinds = reference
    assert kinds.count("stage") == 2 and kinds.count("last") == 3 and "best" in kinds
    assert kinds[-1] == "last"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", range(1, 9))
def test_a_kill_after_any_checkpoint_write_is_resumed_without_losing_one(kill_at, reference, killer, data, tmp_path, zoo) -> None:
    reference_dir, kinds = reference
    if kill_at > len(kinds):
        pytest.skip(f"the run writes {len(kinds)} checkpoints")
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "ZOO_TEST_KILL_AT": str(kill_at),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(killer), os.environ.get("PYTHONPATH", "")])),
    }
    killed = subprocess.run(
        [sys.executable, "-m", "zoo_core", "finetune", *ARGS, "--data", str(data), "--run-dir", str(run_dir)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    resumed = zoo("finetune", *ARGS, "--data", data, "--run-dir", run_dir, "--resume")

    assert resumed.code == 0, resumed
    assert_same_checkpoints(run_dir, reference_dir, f"killed after write {kill_at} ({kinds[kill_at - 1]})")
