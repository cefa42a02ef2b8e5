"""Heads: the built-in factories, finding a model's classifier, and replacing it.

The classifier of a timm model is what ``get_classifier()`` returns; of a ZooModel, its
primary head; of anything else (torchvision, plain modules), the last ``nn.Linear`` (or 1×1
convolution) registered in the module tree. Replacing a head for a new ``num_classes`` can
carry rows over by class name, so a 10-class head initialises a 12-class head with the ten
classes they share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .errors import RecipeError, ZooError, did_you_mean

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


# --- finding and replacing the classifier ---------------------------------------------------------------


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ZooError(f"{type(model).__name__}: its classifier is not one of its submodules")


def find_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of the layer that produces the class scores."""
    primary = getattr(model, "primary_head", None)
    if isinstance(primary, str) and hasattr(model, "heads"):
        head = model.heads[primary]
        return f"heads.{primary}", head
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, tuple):  # distilled ViTs return (head, head_dist)
            classifier = classifier[0]
        if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
            raise ZooError(f"{type(model).__name__}: has no classifier (it was removed); give it a head first")
        return _module_name(model, classifier), classifier
    last: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            last = (name, module)
    if last is None:
        raise ZooError(f"{type(model).__name__}: no linear classifier found; give the head explicitly")
    return last


def output_layer(head: nn.Module) -> nn.Module:
    """The layer inside a head whose rows are classes (the head itself when it is a Linear)."""
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        return head
    fc = getattr(head, "fc", None)
    if isinstance(fc, (nn.Linear, nn.Conv2d)):
        return fc
    last = None
    for module in head.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = module
    if last is None:
        raise ZooError(f"{type(head).__name__}: no output layer found in this head")
    return last


def in_features_of(head: nn.Module) -> int:
    for attribute in ("in_features", "in_channels"):
        value = getattr(head, attribute, None)
        if isinstance(value, int):
            return value
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ZooError(f"{type(head).__name__}: cannot tell its input width")


def num_outputs(model: nn.Module) -> int:
    _, classifier = find_classifier(model)
    layer = output_layer(classifier)
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def build_head(kind: str, in_features: int, out_features: int, registry: Any = None, **options: Any) -> nn.Module:
    """Build a head through its registered factory (``linear``, ``mlp``, or a plugin's)."""
    from .registry import default_registry

    factory = (registry or default_registry()).factory("head", kind).load()
    return factory(in_features, out_features, **options)


def replace_head(
    model: nn.Module,
    num_classes: int,
    kind: str = "linear",
    *,
    old_classes: Sequence[str] | None = None,
    new_classes: Sequence[str] | None = None,
    registry: Any = None,
    **options: Any,
) -> nn.Module:
    """Swap the classifier for one with ``num_classes`` outputs and return the new head.

    When ``old_classes`` and ``new_classes`` are both given and the old and new heads have the
    same structure, rows of shared classes are copied from the old head (class-aware transfer);
    other rows keep their fresh initialisation.
    """
    name, old_head = find_classifier(model)
    timm_linear = kind == "linear" and not options and callable(getattr(model, "reset_classifier", None))
    if timm_linear and not hasattr(model, "heads"):
        model.reset_classifier(num_classes)  # timm keeps num_classes and its config in step
        _, new_head = find_classifier(model)
    else:
        if isinstance(old_head, nn.Linear) and kind == "linear" and not options:
            new_head = nn.Linear(old_head.in_features, num_classes)  # keeps the model's state-dict layout
        else:
            new_head = build_head(kind, in_features_of(old_head), num_classes, registry=registry, **options)
        reference = next(old_head.parameters(), None)
        if reference is not None:
            new_head = new_head.to(device=reference.device, dtype=reference.dtype)
        model.set_submodule(name, new_head)
        if isinstance(getattr(model, "num_classes", None), int):
            model.num_classes = num_classes
    if old_classes is not None and new_classes is not None:
        copy_class_rows(old_head, old_classes, new_head, new_classes)
    return new_head


def copy_class_rows(
    old_head: nn.Module, old_classes: Sequence[str], new_head: nn.Module, new_classes: Sequence[str]
) -> list[str]:
    """Copy output rows of classes both heads share; hidden layers are copied when shapes match.

    :return: the class names whose rows were copied.
    """
    from .transfer import remap_rows

    old_out, new_out = output_layer(old_head), output_layer(new_head)
    shared = [name for name in new_classes if name in set(old_classes)]
    with torch.no_grad():
        old_state = old_head.state_dict()
        new_state = new_head.state_dict()
        out_names = {f"{n}.weight" for n, m in new_head.named_modules() if m is new_out} | {
            f"{n}.bias" for n, m in new_head.named_modules() if m is new_out
        }
        for key, tensor in new_state.items():
            if key in out_names or key not in old_state:
                continue
            if old_state[key].shape == tensor.shape:
                tensor.copy_(old_state[key])
        for attribute in ("weight", "bias"):
            old_param, new_param = getattr(old_out, attribute, None), getattr(new_out, attribute, None)
            if old_param is None or new_param is None:
                continue
            new_param.copy_(remap_rows(old_param, list(old_classes), new_param, list(new_classes)))
    log.info("head: copied rows of %d shared classes out of %d", len(shared), len(new_classes))
    return shared


def strip_classifier(model: nn.Module) -> int:
    """Remove the classifier so the model returns pooled features; return their width."""
    if callable(getattr(model, "reset_classifier", None)) and hasattr(model, "num_features"):
        model.reset_classifier(0)
        # some timm models (MobileNetV3) keep a pre-logits layer wider than num_features
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    name, head = find_classifier(model)
    width = in_features_of(head)
    model.set_submodule(name, nn.Identity())
    return width
