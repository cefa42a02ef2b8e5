"""Zoo plugin: local checkpoint files as a source (``file:PATH``).

A file is buildable when its provenance names the registry model it belongs to, as every
checkpoint and export Zoo writes does: ``file:./runs/exp1/best.pt``.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_sources(register: Any) -> None:
    from .source import FileSource

    register(FileSource())
