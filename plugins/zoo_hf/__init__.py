"""Zoo plugin: timm-format repositories on the Hugging Face Hub, with pinned revisions.

Names: ``hf-hub:ORG/REPO[@REVISION]``; the repository holds timm's ``config.json`` and
``model.safetensors`` (or ``pytorch_model.bin``), as written by ``timm.models.save_for_hf``.
"""

from __future__ import annotations

from typing import Any

from zoo_core import hookimpl


@hookimpl
def zoo_register_sources(register: Any) -> None:
    from .source import HfHubSource

    register(HfHubSource())
