"""Pure tensor operations for carrying weights between shapes: no model, no file, no registry.

The counterparts of timm's ``adapt_input_conv`` and of the row copies a class-aware head
transfer needs. Each returns a new tensor and leaves its inputs untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert a first convolution to ``in_channels`` inputs, as timm's ``adapt_input_conv`` does:
    sum the RGB filters for one channel, otherwise repeat them and rescale."""
    source_channels = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source_channels)
    adapted = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return adapted * (source_channels / in_channels)


def truncate_or_pad(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The overlapping region comes from ``source``; the rest keeps ``target``'s values."""
    result = target.detach().clone()
    overlap = tuple(slice(0, min(s, t)) for s, t in zip(source.shape, target.shape))
    result[overlap] = source[overlap].to(result.dtype)
    return result


@attrs.frozen
class ClassRows:
    """How the first dimension of one tensor holds classes.

    ``repeats`` blocks (anchors per location), each ``leading`` class-free rows (Faster R-CNN's
    background) followed by ``width`` rows per class (four box coordinates). A classifier's
    weight is ``ClassRows(key)``: one row per class.
    """

    key: str
    repeats: int = 1
    leading: int = 0
    width: int = 1

    def rows(self, classes: int) -> int:
        return self.repeats * (self.leading + classes * self.width)


def remap_rows(
    source: torch.Tensor,
    source_classes: Sequence[str],
    target: torch.Tensor,
    target_classes: Sequence[str],
    layout: ClassRows | None = None,
) -> torch.Tensor:
    """Rows of classes both sides name are copied by class name; other rows keep ``target``'s values.

    With a ``layout``, its class-free leading rows are copied too (they mean the same on both sides).
    """
    layout = layout or ClassRows("")
    result = target.detach().clone()
    source_blocks = source.reshape(layout.repeats, layout.rows(len(source_classes)) // layout.repeats, *source.shape[1:])
    target_blocks = result.view(layout.repeats, layout.rows(len(target_classes)) // layout.repeats, *result.shape[1:])
    target_blocks[:, : layout.leading] = source_blocks[:, : layout.leading].to(result.dtype)
    index = {name: row for row, name in enumerate(source_classes)}
    for row, name in enumerate(target_classes):
        if name in index:
            at, to = layout.leading + index[name] * layout.width, layout.leading + row * layout.width
            target_blocks[:, to : to + layout.width] = source_blocks[:, at : at + layout.width].to(result.dtype)
    return result
