"""Where Zoo and the libraries it sits on keep files, read from the environment on every call.

Values are never cached at import time, so a process (or a test) that changes ``ZOO_HOME``,
``HF_HOME`` or ``TORCH_HOME`` sees the change at once.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _xdg_cache() -> Path:
    return _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def zoo_home() -> Path:
    """``$ZOO_HOME``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    return _env_path("ZOO_HOME") or _xdg_cache() / "zoo"


WORKER_REPORTS_ENV = "ZOO_WORKER_REPORTS"  # set by ``zoo finetune --nproc`` for its workers


def worker_reports() -> Path | None:
    """The folder where a ``--nproc`` worker leaves its error line for the launcher; ``None`` outside one."""
    return _env_path(WORKER_REPORTS_ENV)


def is_offline() -> bool:
    """True when ``ZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default."""
    return _env_path("HF_HUB_CACHE") or (_env_path("HF_HOME") or _xdg_cache() / "huggingface") / "hub"


def torch_home() -> Path:
    """``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, as torch.hub computes it."""
    return _env_path("TORCH_HOME") or _xdg_cache() / "torch"


def torch_hub_checkpoints() -> Path:
    """Where torch.hub, torchvision and timm keep downloaded checkpoints."""
    return torch_home() / "hub" / "checkpoints"


def weights_store() -> Path:
    """Zoo's content-addressed store for imported and URL-pinned weights."""
    return zoo_home() / "weights"


def lock_path() -> Path:
    """``./zoo.lock`` when the project has one, else ``$ZOO_HOME/zoo.lock``."""
    project = Path.cwd() / "zoo.lock"
    return project if project.exists() else zoo_home() / "zoo.lock"


def user_catalog() -> Path:
    return zoo_home() / "registry.toml"


def project_catalog() -> Path:
    return Path.cwd() / "zoo.toml"


def builtin_catalog() -> Path:
    """The built-in ``registry.toml``: inside the installed package, or at a checkout's root."""
    packaged = Path(str(resources.files("zoo_core").joinpath("registry.toml")))
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "registry.toml"


def display(path: Path | str) -> str:
    """A path as users should read it in messages: relative to the working folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
