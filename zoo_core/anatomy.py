"""Model anatomy: where a model's classifier, output rows, first convolution and input config are.

What a model family knows about itself comes from plugins through hooks (``zoo_classifier``,
``zoo_reset_classifier``, ``zoo_input_config``, ``zoo_head_dropout``, ``zoo_class_rows``,
``zoo_feature_maps``); this module asks them
and falls back to what holds for any ``nn.Module``: the last ``nn.Linear`` (or 1x1
convolution) is the classifier, the first 4-d weight is the first convolution. Callers pass
the plugin manager's hook relay (``registry.plugins.hook``); nothing here reaches for a
default registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from .errors import ZooError
from .specs import InputConfig
from .tensorops import ClassRows


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def common_prefix(names: Sequence[str]) -> str:
    """The dotted module path that every parameter name shares (``layer1`` for ``layer1.0.*``)."""
    parts = [name.split(".")[:-1] for name in names]
    prefix: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ZooError(f"{type(model).__name__}: its classifier is not one of its submodules")


def _is_scoring_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def last_linear(model: nn.Module) -> tuple[str, nn.Module]:
    """The last ``nn.Linear`` (or 1x1 convolution) registered in the module tree."""
    last: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if _is_scoring_layer(module):
            last = (name, module)
    if last is None:
        raise ZooError(f"{type(model).__name__}: no linear classifier found; give the head explicitly")
    return last


def find_classifier(model: nn.Module, hook: Any) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of the layer that produces the class scores."""
    model = unwrap(model)
    found = hook.zoo_classifier(model=model)
    return found if found is not None else last_linear(model)


def has_classifier(model: nn.Module, hook: Any) -> bool:
    try:
        find_classifier(model, hook)
    except ZooError:
        return False
    return True


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


def outputs_of(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def num_outputs(model: nn.Module, hook: Any) -> int:
    """How many classes ``model`` scores."""
    return outputs_of(output_layer(find_classifier(model, hook)[1]))


def class_rows(model: nn.Module, hook: Any) -> dict[str, ClassRows]:
    """State-dict keys whose rows are classes, with their layouts; none for headless models.

    A plugin answers through ``zoo_class_rows`` (detection heads); otherwise the classifier's
    output layer holds one row per class in its weight and bias.
    """
    answered = hook.zoo_class_rows(model=unwrap(model))
    if answered is not None:
        return {rows.key: rows for rows in answered}
    try:
        _, head = find_classifier(model, hook)
        out = output_layer(head)
    except ZooError:
        return {}
    name = module_name(model, out)
    return {f"{name}.{leaf}": ClassRows(f"{name}.{leaf}") for leaf, _ in out.named_parameters(recurse=False)}


@attrs.frozen(eq=False)
class FeatureMaps:
    """A backbone's multi-scale feature maps, finest first: ``maps(images)`` -> list of (B, C, H, W).

    ``extract`` calls the backbone's own modules (timm's ``forward_intermediates``, or a
    torchvision feature-extraction graph sharing them), so nothing is registered twice and
    the parameters keep their names.
    """

    extract: Callable[[torch.Tensor], list[torch.Tensor]]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    names: tuple[str, ...]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.extract(images)


def feature_maps(model: nn.Module, hook: Any, registry: Any) -> FeatureMaps:
    """How to take ``model``'s multi-scale feature maps (``zoo_feature_maps``)."""
    found = hook.zoo_feature_maps(model=model, registry=registry)
    if found is None:
        raise ZooError(f"{type(model).__name__}: no plugin can take its feature maps; pick a timm or torchvision backbone")
    return found


def first_conv_key(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first 4-d weight of a state dict: the convolution that sees the input channels."""
    return next((key for key, tensor in state.items() if tensor.dim() == 4 and key.endswith("weight")), None)


def input_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (3 when the model has none)."""
    conv = next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def input_config(model: nn.Module, hook: Any, *, image_size: int | None = None) -> InputConfig:
    """The model's input config (from its family's plugin), at ``image_size`` when given."""
    import attrs

    model = unwrap(model)
    trunk = getattr(model, "backbone", model)  # a ZooModel: its backbone was trained on the inputs
    config = hook.zoo_input_config(model=trunk) or InputConfig(channels=input_channels(trunk))
    config = config.for_channels(input_channels(trunk))  # --in-chans changes the first convolution only
    return attrs.evolve(config, size=image_size) if image_size else config


def head_dropout(model: nn.Module, hook: Any) -> float:
    """Dropout applied before the classifier without a module of its own (timm's ``drop_rate``)."""
    return float(hook.zoo_head_dropout(model=unwrap(model)) or 0.0)
