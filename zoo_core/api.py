"""The Python API's registry-facing functions (see ``zoo_core.__init__`` for the full list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import Registry, default_registry
from .specs import ResolvedModel


def list_models(
    pattern: str | None = None, source: str | None = None, pretrained: bool = False, *, registry: Registry | None = None
) -> list[str]:
    """Names matching a shell-style pattern, like ``timm.list_models``.

    With ``pretrained=True`` every pretrained tag is its own name (``timm:resnet10t.c3_in1k``),
    as timm lists them; otherwise one name per architecture, alias or tier.
    """
    rows = (registry or default_registry()).list_models(pattern, source=source, pretrained=pretrained)
    names: list[str] = []
    for row in rows:
        if pretrained and row.kind == "model":
            names += [f"{row.name}.{tag}" for tag in row.tags]
        else:
            names.append(row.name)
    return names


def resolve(name: str, *, registry: Registry | None = None) -> ResolvedModel:
    """Canonical name, source, tag, revision and weight files of any registry name."""
    return (registry or default_registry()).resolve(name)


def load_checkpoint(path: str | Path, *, strip_prefixes: bool = True) -> Any:
    """Read a checkpoint safely (``weights_only``): state dict, metadata and provenance."""
    from .checkpoint import KNOWN_PREFIXES, read_checkpoint

    return read_checkpoint(path, strip=KNOWN_PREFIXES if strip_prefixes else ())
