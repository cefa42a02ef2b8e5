"""Shared fixtures: every test runs in its own folder with its own ZOO_HOME, HF and torch caches.

Nothing here touches the network. The name index (what ``zoo list`` reads) is built once per
session and copied into each test's ZOO_HOME, so tests do not pay timm's import each time.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from zoo_core import hookimpl  # light: no torch

ROOT = Path(__file__).resolve().parent.parent


def declared_plugins() -> dict[str, str]:
    """The ``zoo`` entry points pyproject.toml declares: Zoo's built-in plugins."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["zoo"]

ENV_KEYS = (
    "ZOO_HOME",
    "ZOO_OFFLINE",
    "ZOO_DISABLE_PLUGINS",
    "ZOO_REGISTRY",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "HF_ENDPOINT",
    "ZOO_CONNECT_TIMEOUT",
    "ZOO_DOWNLOAD_TIMEOUT",
)


@pytest.fixture(scope="session")
def name_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ZOO_HOME/index folder built once for the installed timm and torchvision."""
    home = tmp_path_factory.mktemp("index-home")
    saved = os.environ.get("ZOO_HOME")
    os.environ["ZOO_HOME"] = str(home)
    try:
        from zoo_core.registry import Registry

        registry = Registry.load()
        for source in registry.source_names():
            registry.index(source)
    finally:
        if saved is None:
            os.environ.pop("ZOO_HOME", None)
        else:
            os.environ["ZOO_HOME"] = saved
    return home / "index"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name_index: Path) -> Path:
    """A fresh working folder and fresh caches; returns the working folder."""
    from zoo_core.registry import reset_default_registry

    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "zoo-home"
    shutil.copytree(name_index, home / "index")
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    reset_default_registry()
    yield work
    reset_default_registry()


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


@pytest.fixture
def zoo() -> Callable[..., CliResult]:
    """Run the ``zoo`` CLI in-process: ``zoo("list", "resnet1*")`` -> CliResult(code, out, err)."""
    from zoo_core.cli import main
    from zoo_core.registry import reset_default_registry

    def run(*argv: str) -> CliResult:
        reset_default_registry()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(arg) for arg in argv])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def zoo_subprocess() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``zoo`` as a real process (end-to-end tests), with this test's environment."""

    def run(*argv: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "zoo_core", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )

    return run


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, *, split: bool = True, seed: int = 0) -> Path:
    """Small, learnable PNGs: each class has its own colour and stripe direction, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
    parts = {"train": per_class, "val": max(2, per_class // 3)} if split else {"": per_class}
    for part, count in parts.items():
        for label in range(classes):
            folder = root / part / f"class{label}" if part else root / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                base = np.zeros((size, size, 3), dtype=np.float32)
                base[:] = palette[label % len(palette)]
                stripes = (np.arange(size) // 2) % 2
                pattern = stripes[:, None] if label % 2 else stripes[None, :]
                base *= 0.6 + 0.4 * pattern[..., None]
                base += rng.normal(0, 25, base.shape)
                Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``data/train/classK/*.png`` and ``data/val/classK/*.png`` for three classes."""
    return write_image_folder(tmp_path / "data")


@pytest.fixture
def registry():
    """A registry built from the installed plugins and the built-in catalog."""
    from zoo_core.registry import Registry

    return Registry.load()


@pytest.fixture
def make_registry() -> Callable[..., object]:
    """``make_registry(*plugin_objects, files=[...], entry_points=True)``: a fresh plugin manager per call."""
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import PluginHost
    from zoo_core.registry import Registry

    def build(*plugins: object, files: list[Path] | tuple = (), entry_points: bool = True) -> Registry:
        host = PluginHost()
        if entry_points:
            host.load_entry_points()
        for index, plugin in enumerate(plugins):
            host.register(plugin, name=getattr(plugin, "name", None) or f"throwaway-{index}")
        host.check()
        return Registry(host, load_catalog(files))

    return build


@pytest.fixture(scope="session")
def installed_packages(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """``install(path)``: pip-install a package folder into a private target dir (cached per session)."""
    cache: dict[Path, Path] = {}

    def install(package: Path) -> Path:
        package = package.resolve()
        if package not in cache:
            target = tmp_path_factory.mktemp(package.name)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(package)],
                check=True,
                capture_output=True,
                text=True,
            )
            cache[package] = target
        return cache[package]

    return install


def plugin_pyproject(distribution: str, module: str, entry: str) -> str:
    """The ``pyproject.toml`` of a throwaway plugin: ``module`` under the ``zoo`` entry point ``entry``."""
    return textwrap.dedent(f"""
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{distribution}"
        version = "0.0.1"

        [project.entry-points.zoo]
        {entry} = "{module}"

        [tool.hatch.build.targets.wheel]
        packages = ["{module}"]
    """).lstrip()


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package folder from ``{relative path: text}``, each text dedented; returns ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Put an install target on sys.path (and PYTHONPATH for subprocesses) for this test only."""

    def add(target: Path) -> None:
        import importlib

        monkeypatch.syspath_prepend(str(target))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH", "")])))
        importlib.invalidate_caches()

    return add


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_checkpoint(arch="resnet10t", num_classes=5, **extra)``: a training checkpoint of a real timm model."""
    import timm
    import torch

    def make(arch: str = "resnet10t", num_classes: int = 5, name: str = "old.pt", **extra: object) -> Path:
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        path = tmp_path / name
        torch.save({"model_state_dict": model.state_dict(), "epoch": 60, "val_loss": 0.4, **extra}, path)
        return path

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def workspace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name_index: Path) -> Iterator[Path]:
    """A module-wide ZOO_HOME, caches and working folder, for runs that several tests of a module read."""
    from zoo_core.registry import reset_default_registry

    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    shutil.copytree(name_index, root / "zoo-home" / "index")
    (root / "work").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key in ENV_KEYS:
            patch.delenv(key, raising=False)
        patch.setenv("ZOO_HOME", str(root / "zoo-home"))
        for key, folder in (("HF_HOME", "hf-home"), ("TORCH_HOME", "torch-home"), ("XDG_CACHE_HOME", "xdg-cache")):
            patch.setenv(key, str(root / folder))
        patch.chdir(root / "work")
        reset_default_registry()
        yield root
    reset_default_registry()


def assert_one_error(result: CliResult, *fragments: str) -> str:
    """Exit 2 and exactly one stderr line ``zoo: error: …`` holding every fragment, no traceback."""
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("zoo: error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def nested_tensors(value: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every tensor in a (checkpoint) structure, by its path: ``/model_state_dict/fc.weight``."""
    import torch

    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nested_tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from nested_tensors(item, f"{prefix}/{index}")


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"

TINY_TIER = """
[families.tiny.tiers.t1]
rank = 1
backbone = "timm:test_resnet"
neck = { kind = "mlp", dim = 16 }
heads = { classifier = "linear", distance = { kind = "linear", out = 1 } }
"""


def scrambled(model, seed: int):
    """Fill every float tensor (parameters and BN buffers) with positive random values, so that
    equal tensors never come from a shared initialisation."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


def assert_same_tensors(actual, expected) -> None:
    """The same keys, and every tensor ``torch.equal``."""
    import torch

    assert sorted(actual) == sorted(expected)
    unequal = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not unequal, f"tensors differ: {unequal[:5]}"


def write_hf_snapshot(repo_id: str, model, revision: str = HUB_REVISION, *, main: bool = True) -> Path:
    """A Hugging Face hub cache entry (under this test's ``HF_HOME``) written by timm's own ``save_for_hf``."""
    import timm

    repo = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    timm.models.save_for_hf(model, snapshot, safe_serialization=True)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def folder_snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes, to prove a command changed nothing."""
    return {str(p): p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


class InterruptAt:
    """A throwaway plugin: Ctrl-C right after epoch ``epoch`` finished (its checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @hookimpl
    def zoo_on_epoch_end(self, run, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt
