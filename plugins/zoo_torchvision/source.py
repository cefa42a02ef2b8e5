"""The ``torchvision`` source: builders from ``list_models``, weights-enum members as tags."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from zoo_core.download import published_digest_prefix
from zoo_core.errors import UnknownNameError, ZooError, did_you_mean
from zoo_core.names import ModelRef
from zoo_core.sources import IndexEntry
from zoo_core.specs import LocationKind, ResolvedModel, WeightsFile


class TorchvisionSource:
    name = "torchvision"
    priority = 20
    tagged = True
    revisioned = False
    description = "torchvision model builders; tags are members of each builder's weights enum"

    def index_version(self) -> str | None:
        try:
            return f"torchvision-{metadata.version('torchvision')}"
        except metadata.PackageNotFoundError:
            return None

    def build_index(self) -> list[IndexEntry]:
        from torchvision.models import get_model_weights, list_models

        entries = []
        for name in list_models():
            try:
                tags = tuple(member.name for member in get_model_weights(name))
            except (ValueError, KeyError):
                tags = ()
            entries.append(IndexEntry(name, tags))
        return entries

    def resolve(self, ref: ModelRef, registry: Any) -> ResolvedModel:
        index = registry.index(self.name)
        entry = index.get(ref.name) if index is not None else None
        if entry is None:
            names = index.names() if index is not None else []
            raise UnknownNameError(
                f"torchvision has no model '{ref.name}'{did_you_mean(ref.name, names)} "
                f"({len(names)} builders; run `zoo list --source torchvision`)"
            )
        if ref.tag is not None and ref.tag not in entry.tags:
            raise UnknownNameError(
                f"torchvision:{ref.name} has no weights '{ref.tag}'{did_you_mean(ref.tag, entry.tags)} "
                f"(weights: {', '.join(entry.tags) or 'none'})"
            )
        if not entry.tags:
            return ResolvedModel(name=f"torchvision:{ref.name}", source=self.name, architecture=ref.name)
        from torchvision.models import get_model_weights

        enum = get_model_weights(ref.name)
        weights = enum[ref.tag] if ref.tag else enum.DEFAULT
        filename = weights.url.rsplit("/", 1)[-1]
        categories = weights.meta.get("categories")
        return ResolvedModel(
            name=f"torchvision:{ref.name}.{weights.name}",
            source=self.name,
            architecture=ref.name,
            tag=weights.name,
            weights=WeightsFile(
                LocationKind.URL, filename, url=weights.url, sha256_prefix=published_digest_prefix(filename)
            ),
            num_classes=len(categories) if categories else None,
            class_names=tuple(categories) if categories else None,
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
        from torchvision.models import get_model

        from zoo_core.anatomy import num_outputs
        from zoo_core.checkpoint import KNOWN_PREFIXES, read_checkpoint
        from zoo_core.heads import replace_head

        in_chans = kwargs.pop("in_chans", 3)
        if in_chans != 3:
            raise ZooError(
                f"{resolved.name}: torchvision builds its models for 3 input channels, not {in_chans}; use a timm model "
                "(they take --in-chans), or carry these weights into one with `zoo transfer … --in-chans N`"
            )
        if weights_path is None:
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            return get_model(resolved.architecture, weights=None, **kwargs)
        # build at the checkpoint's class count, load, then swap the head (torchvision refuses
        # a different num_classes together with weights)
        if resolved.num_classes is not None:
            kwargs["num_classes"] = resolved.num_classes
        model = get_model(resolved.architecture, weights=None, **kwargs)
        state_dict = read_checkpoint(weights_path, strip=KNOWN_PREFIXES).state_dict
        model.load_state_dict(state_dict, strict=True)
        if num_classes is not None and num_classes != num_outputs(model, registry.plugins.hook):
            replace_head(model, num_classes, registry=registry)
        return model
