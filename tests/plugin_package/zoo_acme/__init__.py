"""A third-party plugin as users would write one: a source, a head, a tier family and a recipe."""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_sources(register: Any) -> None:
    from .source import AcmeSource

    register(AcmeSource())


@hookimpl
def zoo_register_heads(register: Any) -> None:
    register("acme-cosine", "zoo_acme.heads:cosine_head", description="cosine-similarity classifier")


@hookimpl
def zoo_register_tiers(register: Any) -> None:
    register(
        {
            "name": "acme",
            "description": "two ACME tiers",
            "tiers": {
                "small": {"rank": 1, "backbone": "acme:tinynet", "heads": {"classifier": "acme-cosine"}},
                "large": {"rank": 2, "backbone": "timm:resnet10t", "heads": {"classifier": "linear"}},
            },
        }
    )


@hookimpl
def zoo_register_recipes(register: Any) -> None:
    register({"name": "acme-quick", "description": "one short stage", "stages": [{"epochs": 1, "lr": 1e-3, "freeze": 1}]})
