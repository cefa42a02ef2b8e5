"""How a distributed run holds its model: DDP (a copy per process) or FSDP (a shard per process).

``--strategy ddp`` (the default) wraps what trains in ``DistributedDataParallel`` after every
change of the trainable set. ``--strategy fsdp`` shards parameters, gradients and optimizer
state over the processes with PyTorch's ``fully_shard`` (FSDP2), one unit per layer group, so a
backbone too large for one device fine-tunes; frozen groups have no gradients and no optimizer
state. Sharding happens once, before the optimizer is built (the optimizer holds the shards).

Checkpoints do not depend on the strategy: the full model and optimizer state are gathered
(the model's with ``torch.distributed.checkpoint.state_dict``, to rank 0) and written as the
usual one file, in the format an unsharded run writes; resume shards them again.

What FSDP changes for the engine: every process takes part in each forward (validation runs on
all of them, rank 0's result is used), the frozen-trunk feature cache is off (the trunk lives in
shards), and EMA and ``torch.compile`` are not combined with it yet (refused before the run).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from ..groups import LayerGroups
from ..specs import Recipe

log = logging.getLogger(__name__)


class Strategy(str, enum.Enum):
    DDP = "ddp"
    FSDP = "fsdp"


def check_strategy(strategy: Strategy, recipe: Recipe, *, compile_backend: str | None) -> None:
    """Refuse, before any process starts, what FSDP is not combined with yet."""
    if strategy is not Strategy.FSDP:
        return
    if compile_backend:
        raise RunError("--strategy fsdp with --compile is not supported yet; drop --compile, or use --strategy ddp")
    with_ema = [f"stages[{index}]" for index, stage in enumerate(recipe.stages) if stage.ema]
    if with_ema:
        raise RunError(
            f"recipe '{recipe.name}' {with_ema[0]}.ema: --strategy fsdp does not keep an EMA of sharded weights yet; "
            f"add --set {with_ema[0]}.ema=0, or use --strategy ddp"
        )


def shard_units(model: nn.Module, groups: LayerGroups) -> list[str]:
    """The modules to shard, outermost first: for each group, the largest modules whose parameters all belong to it."""
    owner = {param: group.name for group in groups for param in group.params}
    units: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(unit + ".") for unit in units):
            continue
        owners = {owner.get(f"{name}.{param}") for param, _ in module.named_parameters()}
        if len(owners) == 1 and None not in owners:
            units.append(name)
    return units


def shard(model: nn.Module, groups: LayerGroups) -> nn.Module:
    """``fully_shard`` each group's modules, then the root (what is left: shared or loose parameters)."""
    from torch.distributed.fsdp import fully_shard

    units = shard_units(model, groups)
    for name in reversed(units):  # inner units before the root, as FSDP2 asks
        fully_shard(model.get_submodule(name))
    fully_shard(model)
    log.info("fsdp: %d units over %d layer groups", len(units) + 1, len(groups))
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict, on rank 0 (empty elsewhere); a collective when sharded."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered whole: the format an unsharded
    run writes, so either strategy resumes it. A collective when sharded (the same order on every
    process: the optimizer's)."""
    state = optimizer.state_dict()
    if not is_sharded(model):
        return state
    from torch.distributed.tensor import DTensor

    whole = lambda value: value.full_tensor().cpu() if isinstance(value, DTensor) else value  # noqa: E731
    return {"state": {key: {name: whole(value) for name, value in values.items()} for key, values in state["state"].items()},
            "param_groups": state["param_groups"]}  # fmt: skip


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state), options=_options())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a whole optimizer state (:func:`optimizer_state`'s), each tensor sharded as its parameter is."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [param for group in optimizer.param_groups for param in group["params"]]

    def like(value: Any, param: torch.Tensor) -> Any:
        if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        return value

    local = {key: {name: like(value, params[int(key)]) for name, value in values.items()} for key, values in state["state"].items()}
    optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})
