"""Where a checkpoint came from: its ancestry back to the pretrained source, each ancestor verified.

Every checkpoint a run writes carries, in its provenance, a ``lineage``: its ancestors nearest
first — each checkpoint it was trained from (path, sha256, model, data, recipe, best metric) —
ending with the origin of the first weights (a registry name with its revision and file sha256,
or a random initialisation). The whole list travels in every file (and in the safetensors
metadata of ``zoo export``), so a deleted ancestor is still named, with what it was.

Each ancestor is ``verified`` (file present, sha256 equal), ``missing`` or ``changed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import read_tensor_info
from .errors import WeightsError, ZooError
from .fileio import sha256_file
from .paths import display
from .weights import locate

VERIFIED, MISSING, CHANGED = "verified", "missing", "changed"


def checkpoint_entry(path: Path, sha256: str, name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint as an ancestor: where it is, its hash, and what it was trained on."""
    provenance = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), Mapping) else {}
    data = provenance.get("data") if isinstance(provenance.get("data"), Mapping) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), Mapping) else {}
    best = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    if isinstance(meta.get("val_loss"), (int, float)):
        best.setdefault("val_loss", meta["val_loss"])
    return {
        "kind": "checkpoint",
        "path": str(Path(path).resolve()),
        "sha256": sha256,
        "name": name,
        "model": provenance.get("model"),
        "task": provenance.get("task"),
        "data": data.get("root"),
        "classes": len(provenance.get("class_names") or []) or None,
        "recipe": recipe.get("name"),
        "epoch": meta.get("epoch"),
        "best": best,
    }


def origin_entry(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Where the first weights came from, as a provenance without a lineage records it."""
    if provenance.get("base_model") and provenance.get("weights_sha256"):
        return {
            "kind": "pretrained", "name": provenance["base_model"], "source": provenance.get("source"),
            "revision": provenance.get("revision"), "sha256": provenance["weights_sha256"],
        }  # fmt: skip
    return {"kind": "random", "name": provenance.get("model")}


def ancestry(provenance: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A provenance's ancestors, nearest first (older checkpoints without ``lineage``: their origin only)."""
    recorded = provenance.get("lineage")
    if isinstance(recorded, list) and recorded:
        return [dict(item) for item in recorded if isinstance(item, Mapping)]
    return [origin_entry(provenance)]


def _check_file(entry: Mapping[str, Any]) -> tuple[str, str]:
    path = Path(entry.get("path") or "")
    if not path.is_file():
        return MISSING, f"{display(path)} is gone"
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        return CHANGED, f"{display(path)} now has sha256 {actual[:12]}…, not {str(entry.get('sha256'))[:12]}…"
    return VERIFIED, ""


def _check_pretrained(entry: Mapping[str, Any], registry: Any) -> tuple[str, str]:
    try:
        resolved = registry.resolve(entry["name"])
    except ZooError as exc:
        return MISSING, str(exc)
    try:
        located = locate(resolved)
    except WeightsError as exc:  # on disk, but its bytes no longer hash to the pin
        return CHANGED, str(exc)
    if not located:
        return MISSING, f"not in the weights cache; run `zoo pull {entry['name']}`"
    if all(item.sha256 != entry.get("sha256") for item in located):
        return CHANGED, f"the cached file has sha256 {located[0].sha256[:12]}…, not {str(entry.get('sha256'))[:12]}…"
    return VERIFIED, ""


def verify_entry(entry: Mapping[str, Any], registry: Any) -> tuple[str, str]:
    if entry.get("kind") == "checkpoint":
        return _check_file(entry)
    if entry.get("kind") == "pretrained":
        return _check_pretrained(entry, registry)
    return VERIFIED, "nothing to verify: random initialisation"


def trace_lineage(path: str | Path, *, registry: Any = None) -> dict[str, Any]:
    """The checkpoint (``.pt`` or exported ``.safetensors``) and its ancestors, each with a status.

    ``ok`` is false when an ancestor is missing or changed. A file without provenance gives
    ``{"provenance": False, …}`` and ``ok`` true: nothing is known, nothing is wrong.
    """
    path = Path(path)
    _, meta = read_tensor_info(path)
    provenance = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else None
    this = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    if not provenance:
        return {"file": this, "provenance": False, "ancestors": [], "ok": True}
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    entry = checkpoint_entry(path, this["sha256"], str(path), meta)
    ancestors = []
    for item in ancestry(provenance):
        status, detail = verify_entry(item, registry)
        ancestors.append({**item, "status": status, "detail": detail})
    return {"file": {**entry, **this}, "provenance": True, "ancestors": ancestors, "ok": all(a["status"] == VERIFIED for a in ancestors)}


def _describe(entry: Mapping[str, Any]) -> str:
    if entry.get("kind") == "pretrained":
        revision = f"@{entry['revision']}" if entry.get("revision") else ""
        return f"{entry['name']}{revision} (pretrained, sha256 {str(entry.get('sha256'))[:12]}…)"
    if entry.get("kind") == "random":
        return f"{entry.get('name')} (random initialisation)"
    parts = [display(entry.get("path") or "?"), f"sha256 {str(entry.get('sha256'))[:12]}…"]
    trained = [f"{entry['model']}"] if entry.get("model") else []
    if entry.get("data"):
        trained.append(f"on {display(entry['data'])}" + (f" ({entry['classes']} classes)" if entry.get("classes") else ""))
    if entry.get("recipe"):
        trained.append(f"recipe {entry['recipe']}")
    best = entry.get("best") or {}
    shown = next((key for key in ("accuracy", "map", "f1", "val_loss") if key in best), None)
    if shown:
        epoch = f", after epoch {entry['epoch']}" if isinstance(entry.get("epoch"), int) else ""  # epochs finished
        trained.append(f"{shown} {best[shown]:.4f}{epoch}")
    return "  ".join(parts) + ("\n      " + ", ".join(trained) if trained else "")


def format_lineage(lineage: Mapping[str, Any]) -> list[str]:
    if not lineage["provenance"]:
        return [f"{display(lineage['file']['path'])}: has no provenance (not written by Zoo); its ancestry is unknown"]
    lines = [f"this file  {_describe(lineage['file'])}"]
    for depth, entry in enumerate(lineage["ancestors"], start=1):
        mark = entry["status"].upper() if entry["status"] != VERIFIED else "verified"
        lines.append(f"{'  ' * depth}└ {mark:<8}  {_describe(entry)}" + (f"\n{'  ' * depth}    {entry['detail']}" if entry["detail"] and entry["status"] != VERIFIED else ""))
    return lines


__all__ = ["ancestry", "checkpoint_entry", "format_lineage", "origin_entry", "trace_lineage"]
