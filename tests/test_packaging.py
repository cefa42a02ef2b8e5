"""A real, non-editable wheel of Zoo carries the catalog, the built-in plugins and the entry points."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, declared_plugins

PLUGIN_PACKAGES = ("zoo_timm", "zoo_torchvision", "zoo_hf", "zoo_file", "zoo_classification", "zoo_maxsight")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (built,) = out.glob("zoo-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def read(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(suffix)]
        return archive.read(name).decode()


def entry_points(wheel: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # keep names as written
    parser.read_string(read(wheel, ".dist-info/entry_points.txt"))
    return parser


def test_wheel_ships_the_builtin_catalog_inside_zoo_core(wheel: Path, names: list[str]) -> None:
    assert "zoo_core/registry.toml" in names
    assert read(wheel, "zoo_core/registry.toml") == (ROOT / "registry.toml").read_text()


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_wheel_ships_each_builtin_plugin_as_a_top_level_package(names: list[str], package: str) -> None:
    assert f"{package}/__init__.py" in names


def test_wheel_ships_every_plugin_module_and_no_plugins_folder(names: list[str]) -> None:
    expected = {f"{path.parent.name}/{path.name}" for path in (ROOT / "plugins").glob("zoo_*/*.py")}
    assert expected <= set(names)
    assert not any(name.startswith("plugins/") for name in names)


def test_wheel_ships_the_core_package(names: list[str]) -> None:
    for module in ("__init__.py", "hookspecs.py", "plugins.py", "catalog.py", "registry.py", "cli/__init__.py"):
        assert f"zoo_core/{module}" in names


def test_wheel_declares_the_zoo_entry_point_group(wheel: Path) -> None:
    expected = declared_plugins()
    assert set(expected) >= {"core", "timm", "torchvision", "hf-hub", "file", "classification", "maxsight"}
    assert dict(entry_points(wheel)["zoo"]) == expected


def test_wheel_declares_the_zoo_console_script(wheel: Path) -> None:
    assert dict(entry_points(wheel)["console_scripts"]) == {"zoo": "zoo_core.cli:main"}


def test_installed_wheel_finds_its_catalog_and_plugins_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    script = (
        "import zoo_core, zoo_timm\n"
        "from zoo_core import paths\n"
        "from zoo_core.catalog import load_catalog\n"
        "from zoo_core.plugins import load_plugins\n"
        "print(zoo_core.__file__)\n"
        "print(zoo_timm.__file__)\n"
        "print(paths.builtin_catalog())\n"
        "print(sorted(load_catalog().recipes))\n"
        "print(sorted(r.name for r in load_plugins().loaded()))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    core_file, timm_file, catalog, recipes, plugins = result.stdout.splitlines()
    for path in (core_file, timm_file, catalog):
        assert Path(path).resolve().is_relative_to(target.resolve()), path
    assert Path(catalog).name == "registry.toml"
    assert "multigriddet-full" in recipes
    for name in ("core", "timm", "torchvision", "hf-hub", "file", "classification", "maxsight"):
        assert f"'{name}'" in plugins
