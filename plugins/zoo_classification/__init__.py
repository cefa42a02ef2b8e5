"""Zoo plugin: image classification — its data readers, transforms, cross-entropy, accuracy/top-5/F1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo_core import hookimpl

if TYPE_CHECKING:
    from zoo_core.hookspecs import RegisterDatasetReader


@hookimpl
def zoo_register_tasks(register: Any) -> None:
    from .task import ClassificationTask

    register(ClassificationTask())


@hookimpl
def zoo_register_datasets(register: RegisterDatasetReader) -> None:
    from .readers import builtin_readers

    for reader in builtin_readers():
        register(reader)
