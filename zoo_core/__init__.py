"""Zoo: a plugin-based model-zoo registry and transfer-learning engine for PyTorch.

``import zoo_core`` stays light (no torch): the public functions below are imported from
their modules on first use.

    import zoo_core as zoo
    zoo.list_models("resnet1*", source="timm", pretrained=True)
    model = zoo.create_model("timm:resnet10t", pretrained=False, num_classes=3)
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ZooError
from .hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "Registry": "zoo_core.registry",
    "default_registry": "zoo_core.registry",
    "list_models": "zoo_core.api",
    "resolve": "zoo_core.api",
    "create_model": "zoo_core.models",
    "load_checkpoint": "zoo_core.api",
    "save_checkpoint": "zoo_core.checkpoint",
    "plan_transfer": "zoo_core.plans",
    "TransferPlan": "zoo_core.transfer",
    "layer_groups": "zoo_core.groups",
    "LayerGroups": "zoo_core.groups",
    "freeze": "zoo_core.freeze",
    "freeze_to": "zoo_core.freeze",
    "unfreeze": "zoo_core.freeze",
    "FreezeAudit": "zoo_core.freeze",
    "param_groups": "zoo_core.optim",
    "build_optimizer": "zoo_core.optim",
    "replace_head": "zoo_core.heads",
    "FeatureExtractor": "zoo_core.features",
    "ZooModel": "zoo_core.zoomodel",
    "finetune": "zoo_core.engine.api",
    "run_chain": "zoo_core.chains",
    "trace_lineage": "zoo_core.lineage",
    "evaluate": "zoo_core.engine.api",
    "load_model": "zoo_core.inference",
}

__all__ = ["ZooError", "hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
