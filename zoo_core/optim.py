"""Optimizer parameter groups built once from LayerGroups, and learning rates per stage.

Every layer group becomes (up to) two optimizer param groups, with and without weight decay
(norms, biases and tokens get none). All of them exist from the first step, so schedulers,
checkpoints, resume and DDP see one stable layout; stages only change learning rates and
``requires_grad``. A frozen group's rate is 0 and its parameters get no gradient, so the
optimizer skips them entirely and keeps its state for parameters that stay trainable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import RecipeError, did_you_mean
from .groups import LayerGroups
from .specs import LrSpec, Optimizer, Role

NO_DECAY_NAMES = (
    "token",
    "pos_embed",
    "pos_embedding",
    "absolute_pos_embed",
    "relative_position_bias_table",
    "latent",
)


def _no_decay_set(model: nn.Module) -> set[str]:
    declared = getattr(model, "no_weight_decay", None)
    if callable(declared):
        try:
            return set(declared())
        except TypeError:
            return set()
    return set()


def skips_weight_decay(name: str, param: torch.Tensor, declared: set[str] = frozenset()) -> bool:
    """Norm weights, biases, tokens and position embeddings are not decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return (
        param.ndim <= 1
        or leaf == "bias"
        or any(token in leaf for token in NO_DECAY_NAMES)
        or name in declared
        or leaf in declared
    )


def param_groups(model: nn.Module, groups: LayerGroups, *, weight_decay: float) -> list[dict[str, Any]]:
    """One optimizer param group per (layer group, decays or not), all starting at lr 0."""
    params = dict(model.named_parameters())
    declared = _no_decay_set(model)
    result = []
    for group in groups:
        decay = [params[n] for n in group.params if not skips_weight_decay(n, params[n], declared)]
        no_decay = [params[n] for n in group.params if skips_weight_decay(n, params[n], declared)]
        for members, wd, decays in ((decay, weight_decay, True), (no_decay, 0.0, False)):
            if members:
                result.append(
                    {"params": members, "lr": 0.0, "weight_decay": wd, "zoo_group": group.name, "zoo_decay": decays}
                )
    return result


def build_optimizer(
    model: nn.Module,
    groups: LayerGroups,
    *,
    kind: Optimizer | str = Optimizer.ADAMW,
    weight_decay: float = 0.05,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW or SGD over every parameter, grouped by layer group (see :func:`param_groups`)."""
    kind = Optimizer(kind)
    grouped = param_groups(model, groups, weight_decay=weight_decay)
    if kind is Optimizer.SGD:
        make = lambda **fast: torch.optim.SGD(grouped, lr=0.0, momentum=momentum, nesterov=momentum > 0, **fast)  # noqa: E731
    else:
        make = lambda **fast: torch.optim.AdamW(grouped, lr=0.0, **fast)  # noqa: E731
    try:
        # one fused kernel per param group: the per-group cost of the default implementation
        # would otherwise grow with the number of layer groups
        return make(fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without fused kernels
        return make()


def stage_learning_rates(
    lr: LrSpec, groups: LayerGroups, trainable: Iterable[str], *, where: str = "lr"
) -> dict[str, float]:
    """Base learning rate of every group for a stage: frozen groups get 0.

    :param lr: one value; a ``{group or role: lr}`` table (a group's own name wins over its
        role); or ``base`` for the heads divided by ``decay`` once per group below them.
    :raises RecipeError: for a table key that names no group or role, or a trainable group the
        table gives no rate.
    """
    trainable = set(trainable)
    rates = {group.name: 0.0 for group in groups}
    if lr.value is not None:
        for name in trainable:
            rates[name] = lr.value
        return rates
    if lr.base is not None:
        distance = groups.head_distance()
        for name in trainable:
            rates[name] = lr.base / ((lr.decay or 1.0) ** distance[name])
        return rates
    roles = {role.value for role in Role} | {"heads"}
    for key in lr.per_group:
        if key not in groups.names() and key not in roles:
            choices = [*groups.names(), *sorted(roles)]
            raise RecipeError(
                f"{where}.{key}: names no layer group or role{did_you_mean(key, choices)} "
                f"(groups: {', '.join(groups.names())}; roles: backbone, neck, head)"
            )
    for group in groups:
        if group.name not in trainable:
            continue
        role_key = group.role.value
        for key in (group.name, role_key, "heads" if group.role is Role.HEAD else None):
            if key in lr.per_group:
                rates[group.name] = lr.per_group[key]
                break
        else:
            raise RecipeError(
                f"{where}: no learning rate for trainable group '{group.name}' (role {role_key}); "
                f"add '{role_key} = …' or '{group.name} = …'"
            )
    return rates


def apply_learning_rates(optimizer: torch.optim.Optimizer, rates: Mapping[str, float], factor: float = 1.0) -> None:
    """Set every param group's rate to its layer group's base rate times the schedule factor."""
    for param_group in optimizer.param_groups:
        base = rates[param_group["zoo_group"]]
        param_group["zoo_base_lr"] = base
        param_group["lr"] = base * factor


def current_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of each layer group right now."""
    return {param_group["zoo_group"]: param_group["lr"] for param_group in optimizer.param_groups}
