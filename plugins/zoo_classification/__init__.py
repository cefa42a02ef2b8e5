"""Zoo plugin: image classification — image folders, transforms, cross-entropy, accuracy/top-5/F1."""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_tasks(register: Any) -> None:
    from .task import ClassificationTask

    register(ClassificationTask())
