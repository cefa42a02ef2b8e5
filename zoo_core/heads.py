"""Heads: the built-in factories, and replacing a model's classifier.

Which layer is the classifier is the model family's knowledge (``zoo_classifier`` and
``zoo_reset_classifier`` hooks, see :mod:`zoo_core.anatomy`). Replacing a head for a new
``num_classes`` can carry rows over by class name, so a 10-class head initialises a 12-class
head with the ten classes they share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import anatomy
from .anatomy import in_features_of, output_layer
from .errors import RecipeError, did_you_mean
from .registry import Registry, default_registry
from .tensorops import remap_rows

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "tanh": nn.Tanh,
}


# --- factories -------------------------------------------------------------------------------------


class LinearHead(nn.Module):
    """Optional dropout, then one linear layer (named ``fc`` so rules can target it)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


class MlpHead(nn.Module):
    """Hidden layers with activation and dropout, then the output layer (seed 004's CustomHead)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.5,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise RecipeError(
                f"mlp head: unknown activation '{activation}'{did_you_mean(activation, ACTIVATIONS)} "
                f"(choose from {', '.join(ACTIVATIONS)})"
            )
        if isinstance(hidden, int):
            hidden = (hidden,)
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, out_features)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def linear_head(in_features: int, out_features: int, **options: Any) -> nn.Module:
    return LinearHead(in_features, out_features, **options)


def mlp_head(in_features: int, out_features: int, **options: Any) -> nn.Module:
    return MlpHead(in_features, out_features, **options)


# --- finding and replacing the classifier -----------------------------------------------------------


def find_classifier(model: nn.Module, registry: Registry | None = None) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of the layer that scores the classes, as the model's family plugin says."""
    return anatomy.find_classifier(model, (registry or default_registry()).plugins.hook)


def build_head(kind: str, in_features: int, out_features: int, registry: Registry | None = None, **options: Any) -> nn.Module:
    """Build a head through its registered factory (``linear``, ``mlp``, or a plugin's)."""
    factory = (registry or default_registry()).factory("head", kind).load()
    return factory(in_features, out_features, **options)


def _reset(model: nn.Module, num_classes: int, registry: Registry) -> nn.Module:
    """A fresh linear classifier of ``num_classes`` outputs (0: none), in the family's own way."""
    hook = registry.plugins.hook
    found = hook.zoo_reset_classifier(model=model, num_classes=num_classes)
    if found is not None:
        return found
    name, old = anatomy.find_classifier(model, hook)
    if not num_classes:
        new: nn.Module = nn.Identity()
    elif isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)  # keeps the model's state-dict layout
    else:
        new = build_head("linear", in_features_of(old), num_classes, registry)
    _place(model, name, old, new)
    return new


def _place(model: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
    reference = next(old.parameters(), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    model.set_submodule(name, new)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = new.out_features if isinstance(new, nn.Linear) else 0


def replace_head(
    model: nn.Module,
    num_classes: int,
    kind: str = "linear",
    *,
    registry: Registry | None = None,
    old_classes: Sequence[str] | None = None,
    new_classes: Sequence[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Swap the classifier for one with ``num_classes`` outputs and return the new head.

    When ``old_classes`` and ``new_classes`` are both given and the old and new heads have the
    same structure, rows of shared classes are copied from the old head (class-aware transfer);
    other rows keep their fresh initialisation.
    """
    registry = registry or default_registry()
    name, old_head = anatomy.find_classifier(model, registry.plugins.hook)
    if kind == "linear" and not options:
        new_head = _reset(model, num_classes, registry)
    else:
        new_head = build_head(kind, in_features_of(old_head), num_classes, registry, **options)
        _place(model, name, old_head, new_head)
    if old_classes is not None and new_classes is not None:
        copy_class_rows(old_head, old_classes, new_head, new_classes)
    return new_head


def copy_class_rows(
    old_head: nn.Module, old_classes: Sequence[str], new_head: nn.Module, new_classes: Sequence[str]
) -> list[str]:
    """Copy output rows of classes both heads share; hidden layers are copied when shapes match.

    :return: the class names whose rows were copied.
    """
    old_out, new_out = output_layer(old_head), output_layer(new_head)
    shared = [name for name in new_classes if name in set(old_classes)]
    out_names = {f"{n}.{leaf}" for n, m in new_head.named_modules() if m is new_out for leaf in ("weight", "bias")}
    with torch.no_grad():
        old_state = old_head.state_dict()
        for key, tensor in new_head.state_dict().items():
            if key not in out_names and key in old_state and old_state[key].shape == tensor.shape:
                tensor.copy_(old_state[key])
        for attribute in ("weight", "bias"):
            old_param, new_param = getattr(old_out, attribute, None), getattr(new_out, attribute, None)
            if old_param is not None and new_param is not None:
                new_param.copy_(remap_rows(old_param, list(old_classes), new_param, list(new_classes)))
    log.info("head: copied rows of %d shared classes out of %d", len(shared), len(new_classes))
    return shared


def strip_classifier(model: nn.Module, registry: Registry | None = None) -> int:
    """Remove the classifier so the model returns the features it consumed; return their width."""
    registry = registry or default_registry()
    _, head = anatomy.find_classifier(model, registry.plugins.hook)
    width = in_features_of(head)
    _reset(model, 0, registry)
    return width
