"""The ``file`` source: Zoo checkpoints and exports, rebuilt from their provenance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zoo_core.errors import CheckpointError
from zoo_core.names import ModelRef
from zoo_core.specs import LocationKind, ResolvedModel, WeightsFile

log = logging.getLogger(__name__)


class FileSource:
    name = "file"
    priority = None  # bare paths are recognised by the registry itself
    tagged = False
    revisioned = False
    description = "local .pt/.pth/.safetensors files whose provenance names their model"

    def index_version(self) -> str | None:
        return None

    def build_index(self) -> list[Any]:
        return []

    def resolve(self, ref: ModelRef, registry: Any) -> ResolvedModel:
        from zoo_core.checkpoint import read_tensor_info
        from zoo_core.paths import display

        path = Path(ref.name).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{ref.name}: no such checkpoint file")
        _, meta = read_tensor_info(path)
        provenance = meta.get("provenance") or {}
        base = provenance.get("model")
        if not base:
            raise CheckpointError(
                f"{display(path)}: has no provenance naming the model it belongs to; carry its weights into a "
                f"named model instead: `zoo transfer {display(path)} --to NAME -o OUT.pt`"
            )
        base_resolved = registry.resolve(base)
        backbone_only = provenance.get("export") == "backbone"  # `zoo export --backbone-only`: no head, no classes
        class_names = None if backbone_only else provenance.get("class_names")
        return ResolvedModel(
            name=f"file:{path.resolve()}",
            source=self.name,
            architecture=base_resolved.name,
            weights=WeightsFile(LocationKind.LOCAL, path.name, path=str(path.resolve())),
            num_classes=None if backbone_only else provenance.get("num_classes"),
            class_names=tuple(class_names) if class_names else None,
            extra={"provenance": provenance, "backbone_only": backbone_only},
        )

    def create(
        self,
        resolved: ResolvedModel,
        *,
        registry: Any,
        weights_path: Path | None,
        num_classes: int | None,
        **kwargs: Any,
    ) -> Any:
        from zoo_core.checkpoint import KNOWN_PREFIXES, read_checkpoint
        from zoo_core.heads import replace_head
        from zoo_core.models import create_model

        backbone_only = bool(resolved.extra.get("backbone_only"))
        built_classes = (num_classes or resolved.extra["provenance"].get("num_classes")) if backbone_only else resolved.num_classes
        model = create_model(resolved.architecture, pretrained=False, num_classes=built_classes, registry=registry, **kwargs)
        if weights_path is not None:
            state_dict = read_checkpoint(weights_path, strip=KNOWN_PREFIXES).state_dict
            if backbone_only:
                _check_backbone_fits(model, state_dict, weights_path, resolved.architecture, registry)
            loaded = model.load_state_dict(state_dict, strict=not backbone_only)
            if loaded.unexpected_keys:
                raise CheckpointError(f"{weights_path}: holds tensors {', '.join(loaded.unexpected_keys[:3])} this model lacks")
        if num_classes is not None and num_classes != built_classes:
            replace_head(model, num_classes, registry=registry)
        return model


def _check_backbone_fits(model: Any, state_dict: dict[str, Any], path: Path, architecture: str, registry: Any) -> None:
    """A backbone export must fill every backbone tensor of its model: a partial one would train
    a backbone that is partly random while the run reports it as pretrained."""
    from zoo_core.groups import layer_groups
    from zoo_core.paths import display
    from zoo_core.specs import Role
    from zoo_core.transfer import key_groups

    target = model.state_dict()
    owners = key_groups(list(target), layer_groups(model, registry=registry))
    backbone = [key for key in target if owners[key][1] is Role.BACKBONE]
    missing = [key for key in backbone if key not in state_dict]
    reshaped = [
        key for key in backbone if key in state_dict and tuple(state_dict[key].shape) != tuple(target[key].shape)
    ]
    if not (missing or reshaped):
        return
    fits = len(backbone) - len(missing) - len(reshaped)
    problems = [f"{len(missing)} missing, e.g. {', '.join(missing[:2])}"] if missing else []
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} of other shapes, e.g. {key} {list(state_dict[key].shape)} for {list(target[key].shape)}"
        )
    raise CheckpointError(
        f"{display(path)}: fits {fits} of {len(backbone)} backbone tensors of {architecture} ({'; '.join(problems)}); "
        f"export the backbone from a checkpoint of {architecture} (`zoo export CKPT --backbone-only`), "
        "or carry what fits with `zoo transfer`, which reports it"
    )
