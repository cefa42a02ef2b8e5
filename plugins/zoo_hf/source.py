"""The ``hf-hub`` source: timm-format hub repositories, resolved offline-first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo_core import hub
from zoo_core.errors import UnknownNameError, WeightsError
from zoo_core.names import ModelRef
from zoo_core.specs import LocationKind, ResolvedModel, WeightsFile

CONFIG = "config.json"


class HfHubSource:
    name = "hf-hub"
    priority = None  # "org/name" would clash with tier names; always write hf-hub:
    tagged = False  # repository ids contain dots
    revisioned = True
    description = "timm-format repositories on the Hugging Face Hub (revision pinning, offline cache)"

    def index_version(self) -> str | None:
        return None

    def build_index(self) -> list[Any]:
        return []

    def resolve(self, ref: ModelRef, registry: Any) -> ResolvedModel:
        from zoo_core.weights import pinned_revision

        repo_id = ref.name
        if repo_id.count("/") != 1:
            raise UnknownNameError(f"hf-hub:{repo_id}: expected a repository id ORG/NAME, e.g. hf-hub:timm/resnet50.a1_in1k")
        canonical = f"hf-hub:{repo_id}"
        revision = ref.revision or pinned_revision(canonical) or "main"
        config_path = hub.fetch(repo_id, CONFIG, revision, name=f"{canonical}@{ref.revision}" if ref.revision else canonical)
        commit = hub.revision_of(config_path) or revision
        try:
            config = json.loads(config_path.read_text())
            architecture = config["architecture"]
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{canonical}: {config_path} is not a timm config.json ({exc})") from None
        weights_name = hub.weights_filename(repo_id, commit)
        label_names = config.get("label_names") or config.get("pretrained_cfg", {}).get("label_names")
        return ResolvedModel(
            name=canonical,
            source=self.name,
            architecture=architecture,
            revision=commit,
            weights=WeightsFile(LocationKind.HF, weights_name, repo_id=repo_id, revision=commit),
            companions=(WeightsFile(LocationKind.HF, CONFIG, repo_id=repo_id, revision=commit),),
            num_classes=config.get("num_classes"),
            class_names=tuple(label_names) if isinstance(label_names, list) else None,
            extra={"config_path": str(config_path)},
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
        from zoo_timm.source import create_timm_model

        config = json.loads(Path(resolved.extra["config_path"]).read_text())
        pretrained_cfg = dict(config.get("pretrained_cfg", {}))
        pretrained_cfg.update(architecture=resolved.architecture, num_classes=config.get("num_classes"))
        model_args = {**config.get("model_args", {}), **kwargs}
        model_args.pop("num_classes", None)  # timm records it there too; the argument below decides
        return create_timm_model(
            resolved.architecture,
            weights_path=weights_path,
            num_classes=num_classes if num_classes is not None else config.get("num_classes"),
            pretrained_cfg=pretrained_cfg,
            **model_args,
        )
