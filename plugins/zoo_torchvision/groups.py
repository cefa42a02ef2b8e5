"""Layer-group heuristics for the torchvision classification families.

Each family is laid out as module-name prefixes from input to output; fine granularity splits
every stage container into its blocks.
"""

from __future__ import annotations

from torch import nn

from zoo_core.groups import LayerGroups, groups_from_prefixes, refine
from zoo_core.specs import Role

B, N, H = Role.BACKBONE, Role.NECK, Role.HEAD


def _features_layout(model: nn.Module, head: str = "classifier") -> list[tuple[str, Role, list[str]]]:
    count = len(model.features)
    layout = [("stem", B, ["features.0"])]
    layout += [(f"features.{i}", B, [f"features.{i}"]) for i in range(1, count)]
    return layout


def _resnet(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    return [("stem", B, ["conv1", "bn1"])] + [(f"layer{i}", B, [f"layer{i}"]) for i in range(1, 5)] + [("head", H, ["fc"])]


def _regnet(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    blocks = [name for name, _ in model.trunk_output.named_children()]
    return [("stem", B, ["stem"])] + [(b, B, [f"trunk_output.{b}"]) for b in blocks] + [("head", H, ["fc"])]


def _features_classifier(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    return _features_layout(model) + [("head", H, ["classifier"])]


def _swin(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    return _features_layout(model) + [("norm", B, ["norm"]), ("head", H, ["head"])]


def _vit(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    layers = [name for name, _ in model.encoder.layers.named_children()]
    layout = [("stem", B, ["conv_proj", "class_token", "encoder.pos_embedding"])]
    layout += [(f"block{i}", B, [f"encoder.layers.{name}"]) for i, name in enumerate(layers)]
    return layout + [("norm", B, ["encoder.ln"]), ("head", H, ["heads"])]


def _densenet(model: nn.Module, fine: bool = False) -> list[tuple[str, Role, list[str]]]:
    """Dense blocks with their transitions; fine: one group per dense layer (the transition joins the last)."""
    layout = [("stem", B, ["features.conv0", "features.norm0"])]
    children = dict(model.features.named_children())
    for name, block in children.items():
        if not name.startswith("denseblock"):
            continue
        index = name.removeprefix("denseblock")
        transition = [f"features.transition{index}"] if f"transition{index}" in children else []
        if fine:
            layers = [f"features.{name}.{layer}" for layer, _ in block.named_children()]
            layout += [(f"block{index}.{i}", B, [prefix]) for i, prefix in enumerate(layers)]
            layout[-1] = (layout[-1][0], B, [*layout[-1][2], *transition])
        else:
            layout.append((f"block{index}", B, [f"features.{name}", *transition]))
    layout[-1] = (layout[-1][0], B, [*layout[-1][2], "features.norm5"])
    return layout + [("head", H, ["classifier"])]


def _vgg(model: nn.Module) -> list[tuple[str, Role, list[str]]]:
    layout: list[tuple[str, Role, list[str]]] = []
    current: list[str] = []
    for name, module in model.features.named_children():
        if isinstance(module, nn.MaxPool2d):
            if current:
                layout.append((f"block{len(layout) + 1}", B, current))
            current = []
        elif any(True for _ in module.parameters()):
            current.append(f"features.{name}")
    if current:
        layout.append((f"block{len(layout) + 1}", B, current))
    linears = [name for name, module in model.classifier.named_children() if isinstance(module, nn.Linear)]
    layout.append(("fc", N, [f"classifier.{name}" for name in linears[:-1]]))
    return layout + [("head", H, [f"classifier.{linears[-1]}"])]


FAMILIES = {
    "ResNet": _resnet,
    "RegNet": _regnet,
    "MobileNetV2": _features_classifier,
    "MobileNetV3": _features_classifier,
    "EfficientNet": _features_classifier,
    "ConvNeXt": _features_classifier,
    "SwinTransformer": _swin,
    "VisionTransformer": _vit,
    "DenseNet": _densenet,
    "VGG": _vgg,
}


def torchvision_layer_groups(model: nn.Module, granularity: str = "coarse") -> LayerGroups | None:
    layout_of = FAMILIES.get(type(model).__name__)
    if layout_of is None:
        return None  # not a known family: core falls back to top-level children
    if layout_of is _densenet:
        layout = _densenet(model, fine=granularity == "fine")
    else:
        layout = layout_of(model)
        if granularity == "fine":
            layout = refine(model, layout)
    return groups_from_prefixes(model, layout, what=type(model).__name__)
