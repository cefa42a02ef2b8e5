"""The README's commands run as written, so the documentation cannot rot.

Every ``$ command`` line of a ``console`` block runs, in order, in one sandbox folder; a ``toml``
block whose first line is ``# FILE`` is written to FILE at that point; ``python`` blocks run as
scripts. The sandbox stands in for a connected machine: the Hugging Face cache already holds
``timm/resnet10t.c3_in1k`` (written by timm's own ``save_for_hf``), ``my_images`` holds a small
image folder, ``my_coco`` a small COCO-format detection set, and ``resnet14t.safetensors`` is the file "brought over" for ``zoo import``.
``pip install`` lines install into a folder of the sandbox instead of the developer's venv.
The Quickstart's two setup commands are what CI itself runs (checked below, not re-run here).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, write_hf_snapshot, write_image_folder

README = ROOT / "README.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in FENCE.findall(README.read_text())]


def quickstart_commands() -> list[str]:
    return [body.strip() for kind, body in readme_blocks() if kind == "bash"]


def test_quickstart_has_exactly_the_two_commands() -> None:
    demo, tests = quickstart_commands()
    assert demo.endswith(".venv/bin/zoo demo")
    assert tests.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readme_test_command() -> None:
    assert quickstart_commands()[1] in (ROOT / ".ci" / "run").read_text()


def _sandbox(work: Path) -> dict[str, str]:
    import timm
    from safetensors.torch import save_file

    write_hf_snapshot("timm/resnet10t.c3_in1k", timm.create_model("resnet10t.c3_in1k", pretrained=False))
    write_image_folder(work / "my_images", classes=3, per_class=12, size=24)
    from zoo_detection.scenes import write_digit_scenes  # COCO-format scenes of real digits, for the detection section

    write_digit_scenes(work / "my_coco" / "train", 12, seed=0, size=64, digit=20, digits=(3, 7, 9))
    write_digit_scenes(work / "my_coco" / "val", 4, seed=1, size=64, digit=20, digits=(3, 7, 9))
    save_file(timm.create_model("resnet14t", pretrained=False).state_dict(), work / "resnet14t.safetensors")
    (work / "examples").symlink_to(ROOT / "examples")
    site = work / "site"
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env["ZOO_SITE"] = str(site)
    return env


def _run(command: str, env: dict[str, str], cwd: Path) -> None:
    if command.startswith("pip install "):
        target = env["ZOO_SITE"]
        command = f"{shlex.quote(sys.executable)} -m pip install -q --no-deps --no-build-isolation --target {target} {command[12:]}"
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_commands_run(isolated: Path) -> None:
    env = _sandbox(isolated)
    ran = 0
    for kind, body in readme_blocks():
        if kind == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    _run(line[2:], env, isolated)
                    ran += 1
        elif kind == "toml" and body.startswith("# "):
            (isolated / body.splitlines()[0][2:].strip()).write_text(body)
        elif kind == "python":
            script = isolated / "readme_snippet.py"
            script.write_text(body)
            _run(f"{shlex.quote(sys.executable)} {script}", env, isolated)
            ran += 1
    assert ran >= 20
    assert (isolated / "runs" / "first" / "checkpoints" / "best.pt").exists()
    assert (isolated / "backbone.safetensors").exists()
    assert (isolated / "zoo.lock").read_text().count("sha256") >= 3
