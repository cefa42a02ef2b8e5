"""The model a run starts from, where its weights came from, and the plan that carried them.

A checkpoint (a path, ``file:PATH``, or an alias to one) is carried into its own architecture
with the run's class count through a transfer plan (class rows by name); any other name is
built by its source or tier, with its pretrained weights when asked — a tier without weights
of its own starts from its backbone's. Nothing here prints: the plan goes back to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from ..errors import CheckpointError
from ..lineage import ancestry, checkpoint_entry, origin_entry
from ..models import build_model, has_own_weights
from ..names import split_source
from ..paths import display
from ..plans import plan_names
from ..provenance import make_provenance
from ..registry import Registry
from ..specs import ResolvedModel
from ..tensors import TensorSource
from ..transfer import TransferPlan
from ..weights import fetch


@attrs.frozen
class StartModel:
    model: nn.Module
    provenance: dict[str, Any]
    plan: TransferPlan | None = None  # when the weights were carried in from a checkpoint


def _checkpoint_path(name: str, registry: Registry) -> tuple[Path, str] | None:
    """The file behind ``name`` when it is a checkpoint (a path, ``file:PATH`` or an alias to one)."""
    prefix, body = split_source(name)
    path = Path(body if prefix == "file" else name).expanduser()
    if (prefix in (None, "file")) and path.is_file():
        return path, name
    if prefix is None:
        resolved = registry.resolve(name)
        if resolved.source == "file" and resolved.weights is not None:
            return Path(resolved.weights.path), resolved.requested or name
    return None


def from_checkpoint(path: Path, requested: str, *, registry: Registry, class_names: Sequence[str], num_classes: int, **options: Any) -> StartModel:
    """Carry a Zoo checkpoint into its architecture, rebuilt from its provenance."""
    source = TensorSource.from_file(path)
    architecture = source.model
    if not architecture:
        raise CheckpointError(
            f"{display(path)}: has no provenance naming the model it belongs to; carry its weights into a "
            f"named model instead: `zoo transfer {display(path)} --to NAME -o OUT.pt`"
        )
    model = build_model(registry.resolve(architecture), registry=registry, num_classes=num_classes, **options)
    planned = plan_names(source, model, target_classes=class_names, registry=registry).plan
    transfer = planned.apply(model)
    digest = source.digest()
    ancestor = checkpoint_entry(path, digest, requested, source.meta)  # its path resolved, for the lineage
    parent = {**ancestor, "path": str(path)}  # the path as the run was given it
    provenance = make_provenance(
        model=architecture,
        base_model=source.provenance.get("base_model") or architecture,
        source="file",
        weights_sha256=digest,
        num_classes=num_classes,
        class_names=class_names,
        transfer=transfer,
        parent=parent,
        extra={"lineage": [ancestor, *ancestry(source.provenance)]},
    )
    return StartModel(model, provenance, planned)


def _pretrained_origin(resolved: ResolvedModel, registry: Registry, pretrained: bool) -> tuple[str | None, str | None]:
    """The name whose weights the model starts from, and their sha256."""
    if not pretrained:
        return None, None
    if resolved.tier is not None and not has_own_weights(resolved):
        backbone = registry.resolve(resolved.tier.backbone)  # the tier starts from its backbone's weights
        return backbone.name, fetch(backbone)[0].sha256
    return resolved.name, fetch(resolved)[0].sha256


def start_model(
    name: str, *, registry: Registry, class_names: Sequence[str], num_classes: int, pretrained: bool, **options: Any
) -> StartModel:
    """The model to fine-tune, its provenance, and the transfer plan when one carried its weights."""
    checkpoint = _checkpoint_path(name, registry)
    if checkpoint is not None:
        return from_checkpoint(*checkpoint, registry=registry, class_names=class_names, num_classes=num_classes, **options)
    resolved = registry.resolve(name)
    model = build_model(resolved, registry=registry, pretrained=pretrained, num_classes=num_classes, **options)
    base_model, digest = _pretrained_origin(resolved, registry, pretrained)
    provenance = make_provenance(
        model=resolved.name,
        base_model=base_model,
        source=resolved.source,
        revision=resolved.revision,
        weights_sha256=digest,
        num_classes=num_classes,
        class_names=class_names,
    )
    provenance["lineage"] = [origin_entry(provenance)]
    return StartModel(model, provenance)
