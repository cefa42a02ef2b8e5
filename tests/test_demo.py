"""`zoo demo`: transfer beats training from scratch on the bundled digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_quick_demo_puts_transfer_ahead_of_scratch(zoo, isolated: Path) -> None:
    result = zoo("demo", "--quick", "--out", "demo-out")
    assert result.code == 0, result
    summary = json.loads((isolated / "demo-out" / "demo.json").read_text())
    transfer, scratch = summary["arms"]
    assert (transfer["arm"], scratch["arm"]) == ("transfer", "scratch")
    assert transfer["epochs"] == scratch["epochs"]
    assert transfer["accuracy"] > scratch["accuracy"]
    assert "ARM" in result.out and "transfer" in result.out and "scratch" in result.out
    assert (isolated / "demo-out" / "curves.png").stat().st_size > 1000


def test_demo_registers_the_pretrained_checkpoint_under_a_name(zoo, isolated: Path) -> None:
    assert zoo("demo", "--quick", "--out", "demo-out").code == 0
    info = zoo("--registry", "demo-out/zoo.toml", "info", "digits-0-4", "--json")
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
