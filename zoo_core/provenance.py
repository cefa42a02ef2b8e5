"""Provenance: where a checkpoint's weights came from, stored inside every file Zoo saves.

A provenance block is plain JSON-compatible data, so it survives ``weights_only`` loading and
safetensors metadata::

    {"model": "timm:resnet10t", "base_model": "timm:resnet10t.c3_in1k", "source": "timm",
     "revision": null, "weights_sha256": "...", "num_classes": 5, "class_names": [...],
     "task": "classification", "transfer": {...plan report...},
     "parent": {"path": "...", "sha256": "..."}, "versions": {...}, "created": "..."}

``model`` is the registry name that rebuilds the architecture; ``parent`` links to the
checkpoint this one was trained from, forming a lineage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

TRACKED_PACKAGES = ("zoo", "torch", "torchvision", "timm", "safetensors", "huggingface-hub")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def make_provenance(
    *,
    model: str,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    base_model: str | None = None,
    source: str | None = None,
    revision: str | None = None,
    weights_sha256: str | None = None,
    task: str | None = None,
    transfer: Mapping[str, Any] | None = None,
    parent: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a provenance block; ``created`` and package versions are filled in."""
    block: dict[str, Any] = {
        "model": model,
        "base_model": base_model,
        "source": source,
        "revision": revision,
        "weights_sha256": weights_sha256,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "task": task,
        "transfer": dict(transfer) if transfer is not None else None,
        "parent": dict(parent) if parent is not None else None,
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        block.update(extra)
    return block

