"""`zoo demo`: transfer beats training from scratch on the bundled digits."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from conftest import CliResult


@pytest.fixture(scope="module")
def quick_demo(workspace: Path) -> tuple[Path, CliResult]:
    """One `zoo demo --quick` run shared by this module's tests (it trains three models)."""
    from zoo_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--quick", "--out", "demo-out"])
    return workspace / "work" / "demo-out", CliResult(code, out.getvalue(), err.getvalue())


def test_quick_demo_puts_transfer_ahead_of_scratch(quick_demo) -> None:
    out, result = quick_demo
    assert result.code == 0, result
    summary = json.loads((out / "demo.json").read_text())
    transfer, scratch = summary["arms"]
    assert (transfer["arm"], scratch["arm"]) == ("transfer", "scratch")
    assert transfer["epochs"] == scratch["epochs"]
    assert transfer["accuracy"] > scratch["accuracy"]
    assert transfer["epochs_to_target"] is not None
    assert scratch["epochs_to_target"] is None or scratch["epochs_to_target"] > transfer["epochs_to_target"]


def test_quick_demo_prints_the_table_and_draws_the_curves(quick_demo) -> None:
    out, result = quick_demo
    header = next(line for line in result.out.splitlines() if line.startswith("ARM"))
    assert "VAL ACCURACY" in header and "EPOCHS TO 60%" in header and "WALL TIME" in header
    assert any(line.startswith("transfer") for line in result.out.splitlines())
    assert any(line.startswith("scratch") for line in result.out.splitlines())
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_registers_the_pretrained_checkpoint_under_a_name(quick_demo, zoo) -> None:
    out, _ = quick_demo
    info = zoo("--registry", out / "zoo.toml", "info", "digits-0-4", "--json")
    assert info.code == 0, info
    data = json.loads(info.out)
    assert data["source"] == "file"
    assert data["architecture"].startswith("timm:resnet10t")


def test_demo_refuses_to_replace_a_folder_it_did_not_make(zoo, isolated: Path) -> None:
    keep = isolated / "precious" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    result = zoo("demo", "--quick", "--out", "precious")
    assert result.code == 2
    assert result.err.startswith("zoo: error: precious: exists and was not made by `zoo demo`")
    assert keep.read_text() == "mine"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_full_demo_transfer_beats_scratch(zoo_subprocess, isolated: Path) -> None:
    done = zoo_subprocess("demo", "--out", "full", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    transfer, scratch = json.loads((isolated / "full" / "demo.json").read_text())["arms"]
    assert transfer["accuracy"] > scratch["accuracy"]
