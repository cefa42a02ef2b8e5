"""The ``timm`` source: architectures from ``timm.list_models``, tags from ``list_pretrained``."""

from __future__ import annotations

import logging
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

from zoo_core import hub
from zoo_core.download import published_digest_prefix
from zoo_core.errors import UnknownNameError, did_you_mean
from zoo_core.names import ModelRef
from zoo_core.sources import IndexEntry
from zoo_core.specs import LocationKind, ResolvedModel, WeightsFile

log = logging.getLogger(__name__)



class TimmSource:
    name = "timm"
    priority = 10
    tagged = True
    revisioned = True
    description = "PyTorch Image Models (timm): architectures and pretrained tags"

    def index_version(self) -> str | None:
        try:
            return f"timm-{metadata.version('timm')}"
        except metadata.PackageNotFoundError:
            return None

    def build_index(self) -> list[IndexEntry]:
        import timm

        tags: dict[str, list[str]] = defaultdict(list)
        for full_name in timm.list_pretrained():
            architecture, _, tag = full_name.partition(".")
            if tag:
                tags[architecture].append(tag)
        return [IndexEntry(name, tuple(tags.get(name, ()))) for name in timm.list_models()]

    def resolve(self, ref: ModelRef, registry: Any) -> ResolvedModel:
        index = registry.index(self.name)
        entry = index.get(ref.name) if index is not None else None
        if entry is None:
            names = index.names() if index is not None else []
            raise UnknownNameError(
                f"timm has no architecture '{ref.name}'{did_you_mean(ref.name, names)} "
                f"({len(names)} architectures; run `zoo list --source timm 'PATTERN*'`)"
            )
        tag = ref.tag
        if tag is not None and tag not in entry.tags:
            known = ", ".join(entry.tags) or "none"
            raise UnknownNameError(
                f"timm:{ref.name} has no pretrained tag '{tag}'{did_you_mean(tag, entry.tags)} (tags: {known})"
            )
        if tag is None and entry.tags:
            tag = entry.tags[0]  # timm's default: the first tag it lists
        if tag is None:
            return ResolvedModel(name=f"timm:{ref.name}", source=self.name, architecture=ref.name)
        return self._pretrained(ref, tag)

    def _pretrained(self, ref: ModelRef, tag: str) -> ResolvedModel:
        import timm

        from zoo_core.weights import pinned_revision

        full_name = f"{ref.name}.{tag}"
        canonical = f"timm:{full_name}"
        cfg = timm.models.get_pretrained_cfg(full_name).to_dict()
        weights = None
        revision = ref.revision
        if cfg.get("hf_hub_id"):
            revision = revision or pinned_revision(canonical)
            filename = cfg.get("hf_hub_filename") or hub.weights_filename(cfg["hf_hub_id"], revision)
            weights = WeightsFile(LocationKind.HF, filename, repo_id=cfg["hf_hub_id"], revision=revision)
        elif cfg.get("url"):
            filename = cfg["url"].rsplit("/", 1)[-1]
            weights = WeightsFile(LocationKind.URL, filename, url=cfg["url"], sha256_prefix=published_digest_prefix(filename))
        label_names = cfg.get("label_names")
        return ResolvedModel(
            name=canonical,
            source=self.name,
            architecture=ref.name,
            tag=tag,
            revision=revision,
            weights=weights,
            num_classes=cfg.get("num_classes"),
            class_names=tuple(label_names) if isinstance(label_names, (list, tuple)) else None,
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
        model_name = f"{resolved.architecture}.{resolved.tag}" if resolved.tag else resolved.architecture
        return create_timm_model(model_name, weights_path=weights_path, num_classes=num_classes, **kwargs)


def create_timm_model(
    model_name: str,
    *,
    weights_path: Path | None,
    num_classes: int | None,
    pretrained_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``timm.create_model`` with weights read safely by Zoo from an already verified file.

    timm's own pretrained loading still runs (its checkpoint filters, input-channel adaptation
    and classifier reset for a new ``num_classes``), fed with the tensors Zoo read.
    """
    import timm

    from zoo_core.checkpoint import KNOWN_PREFIXES, read_checkpoint

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_cfg is not None:
        kwargs["pretrained_cfg"] = pretrained_cfg
    if weights_path is None:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    state_dict = read_checkpoint(weights_path, strip=KNOWN_PREFIXES).state_dict
    model = timm.create_model(
        model_name,
        pretrained=True,
        pretrained_cfg_overlay={"state_dict": state_dict, "source": ""},
        **kwargs,
    )
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):  # do not keep a second copy of every tensor on the model
            cfg.pop("state_dict", None)
    return model
