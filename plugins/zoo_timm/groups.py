"""Layer groups for timm models from their own ``group_matcher``.

timm sends every parameter its matcher does not name to the last (head) group, which is how
a forgotten token ends up with the classifier's learning rate (timm #2712). Here that is
accepted only for parameters registered after every matched one (head norms, a conv head);
an unmatched parameter in the middle of the model is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from zoo_core.anatomy import common_prefix
from zoo_core.errors import GroupError, ZooError
from zoo_core.groups import LayerGroups
from zoo_core.specs import Role

from .anatomy import timm_classifier


def _compiled_patterns(matcher: Any) -> list[re.Pattern[str]] | None:
    if not isinstance(matcher, dict):
        return None  # callable matchers place every parameter themselves
    patterns = []
    for spec in matcher.values():
        if spec is None:
            continue
        if isinstance(spec, (list, tuple)):
            patterns += [re.compile(item[0]) for item in spec]
        else:
            patterns.append(re.compile(spec))
    return patterns


def _module_of(param: str) -> str:
    """``blocks.6.conv.weight`` -> ``blocks.6``; ``conv_head.weight`` -> ``conv_head``."""
    parts = param.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _group_name(params: Sequence[str], index: int, taken: set[str], patterns: list[re.Pattern[str]] | None) -> str:
    # the matcher's own match names the group at its granularity ("layer1", "blocks.3")
    match = next((m for p in patterns or () if (m := p.match(params[0]))), None)
    name = match.group(0).rstrip(".") if match and index > 0 else common_prefix(params)
    if not name:
        modules = list(dict.fromkeys(_module_of(param) for param in params))
        name = "stem" if index == 0 else "+".join(modules[:3])
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def timm_layer_groups(model: Any, granularity: str = "coarse") -> LayerGroups:
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=granularity == "coarse")
    named = [name for name, _ in model.named_parameters()]
    grouped = group_parameters(model, matcher)
    patterns = _compiled_patterns(matcher)
    if patterns is not None:
        order = {name: index for index, name in enumerate(named)}
        matched = [name for name in named if any(p.match(name) for p in patterns)]
        last_matched = max((order[name] for name in matched), default=-1)
        stray = [name for name in named if name not in set(matched) and order[name] < last_matched]
        if stray:
            raise GroupError(
                f"{type(model).__name__}: parameter '{stray[0]}' matches no group of timm's group_matcher and would "
                "silently share the head's learning rate; implement zoo_layer_groups for this architecture in a plugin"
            )
    try:
        classifier_name = timm_classifier(model)[0]
    except ZooError:  # the classifier was removed: every group is backbone
        classifier_name = ""
    taken: set[str] = set()
    assignments = []
    ordinals = sorted(grouped)
    for position, ordinal in enumerate(ordinals):
        params = grouped[ordinal]
        is_head = bool(classifier_name) and any(p.startswith(classifier_name + ".") for p in params)
        name = "head" if is_head else _group_name(params, position, taken, patterns)
        assignments.append((name, Role.HEAD if is_head else Role.BACKBONE, params))
    return LayerGroups.partition(model, assignments, what=type(model).__name__)
