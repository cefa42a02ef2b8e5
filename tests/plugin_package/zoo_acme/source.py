"""The ``acme`` source: one tiny convolutional network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo_core.errors import UnknownNameError
from zoo_core.sources import IndexEntry
from zoo_core.specs import ResolvedModel


class AcmeSource:
    name = "acme"
    priority = 50
    tagged = True
    revisioned = False
    description = "ACME's tiny networks"

    def index_version(self) -> str | None:
        return "acme-1"

    def build_index(self) -> list[IndexEntry]:
        return [IndexEntry("tinynet")]

    def resolve(self, ref: Any, registry: Any) -> ResolvedModel:
        if ref.name != "tinynet":
            raise UnknownNameError(f"acme has no model '{ref.name}'")
        return ResolvedModel(name="acme:tinynet", source=self.name, architecture="tinynet")

    def create(self, resolved: ResolvedModel, *, registry: Any, weights_path: Path | None, num_classes: int | None, **kwargs: Any) -> Any:
        from .model import TinyNet

        return TinyNet(num_classes or 10)
