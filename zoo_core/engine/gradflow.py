"""Gradient flow per layer group: what each group's gradients and weights did in an epoch, and
checks that say when a group meant to learn did not, or a frozen one moved.

The classic failure of staged fine-tuning is silent: a group that was meant to unfreeze does not
learn (a stale compiled graph, pytorch #139476; a ``requires_grad`` set on the wrong module; a
task that runs part of the model under ``torch.no_grad``), or a frozen group's weights or
BatchNorm statistics move anyway. :class:`GradientFlow` watches both, cheaply:

- each step, the L2 norm of every trainable group's gradients (after unscaling under AMP, before
  clipping) goes into a buffer on the device; no value crosses to the host, nothing synchronises;
- each epoch, one reduction across processes, then per group the mean and largest gradient norm,
  the update-to-weight ratio ``‖w_end - w_start‖ / ‖w_start‖``, the fraction of steps clipped,
  and checksums of every frozen tensor (frozen groups' parameters, pinned BatchNorm's buffers)
  compared with those taken when the group was frozen.

A trainable group whose gradient was zero at every step, or whose weights did not change, is a
warning naming the group and the stage (an error with ``--strict-groups``); a frozen tensor that
changed is always an error: it is a bug in Zoo or in a plugin, never the user's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import FrozenMovedError, GroupNotLearningError
from ..freeze import is_pinned
from ..groups import LayerGroups
from . import distributed

log = logging.getLogger(__name__)

SHOWN = 5  # tensors named in one message


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor``: its shard under FSDP, the tensor itself otherwise."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def checksums(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Two integer checksums per tensor over its bytes read as integers (their sum, and their sum
    weighted by position), on the tensor's device, for any dtype: a change of any one value alters
    the first, values trading places alter the second (Fletcher's idea).

    A hash on the host (``freeze.fingerprint``) would copy every frozen tensor off the GPU each
    epoch; these are two reductions each, and one small transfer for all of them.
    """
    sums = []
    for tensor in tensors:
        data = local(tensor).detach().contiguous().reshape(-1)
        size = data.element_size()
        words = data.view(torch.uint8 if size == 1 else torch.int16 if size == 2 else torch.int32).to(torch.int64)
        weights = torch.arange(words.numel(), device=words.device, dtype=torch.int64) % 65_521 + 1
        sums.append(torch.stack([words.sum(), (words * weights).sum()]))
    return torch.stack(sums) if sums else torch.zeros(0, 2, dtype=torch.int64)


def frozen_tensors(model: nn.Module, groups: LayerGroups, trainable: Iterable[str]) -> dict[str, torch.Tensor]:
    """What must not move while ``trainable`` train: every parameter of the other groups, and the
    buffers of BatchNorm layers pinned in eval mode (``bn = "train"`` lets the others' statistics move)."""
    training = set(trainable)
    params = dict(model.named_parameters())
    tensors = {name: params[name] for group in groups if group.name not in training for name in group.params}
    for module_name, module in model.named_modules():
        if is_pinned(module):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                tensors[f"{module_name}.{buffer_name}" if module_name else buffer_name] = buffer
    return tensors


def _squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).float().square().sum()


class GradientFlow:
    """Per-group gradient figures and checks for one run; see the module docstring."""

    def __init__(
        self, model: nn.Module, groups: LayerGroups, *, dist: distributed.DistInfo, sharded: bool, enabled: bool = True,
        strict: bool = False, scaler: bool = False,
    ) -> None:  # fmt: skip
        """``scaler``: an fp16 GradScaler skips steps with non-finite gradients, as it calibrates."""
        self.model, self.groups, self.dist, self.sharded = model, groups, dist, sharded
        self.enabled, self.strict, self.scaler = enabled, strict, scaler
        self._params = dict(model.named_parameters())
        self._frozen_for: tuple[int, frozenset[str]] | None = None  # the stage and trainable set the checksums were taken for
        self._warned: set[tuple[int, str]] = set()  # (stage, group): one warning per stage
        self._norms: torch.Tensor | None = None

    # -- an epoch ---------------------------------------------------------------------------------------

    def begin_epoch(self, stage_index: int, trainable: frozenset[str], steps: int, extra: Sequence[torch.Tensor] = ()) -> None:
        """Start watching: in stage ``stage_index``, ``trainable`` groups train for up to ``steps``
        steps; ``extra`` are parameters that require gradients outside them (clipped with the rest,
        never reported)."""
        if not self.enabled:
            return
        self.tracked = [group.name for group in self.groups if group.name in trainable]
        slot = {name: index for index, group in enumerate(self.tracked) for name in self.groups.group(group).params}
        extra_ids = {id(param) for param in extra}
        # model order, as clip_grad_norm_ sees them: the total norm for clipping is the same number
        members = [(param, slot.get(name, len(self.tracked))) for name, param in self._params.items() if name in slot or id(param) in extra_ids]
        device = next(iter(self._params.values())).device
        self._members = members
        self._slots = torch.tensor([slot for _, slot in members], dtype=torch.int64).to(device)
        self._dtypes_differ = len({param.dtype for param, _ in members}) > 1
        self._norms = torch.zeros(steps, len(self.tracked) + 1, device=device)  # squared norms; the last column: extra
        self._steps = 0
        self._start = {group: [local(self._params[name]).detach().clone() for name in self.groups.group(group).params] for group in self.tracked}
        # the checksums stay valid from one epoch to the next while nothing thaws; a new stage may
        # pin BatchNorm differently (its `bn`) with the same groups frozen, so it takes them afresh
        if self._frozen_for != (stage_index, trainable):
            self._frozen = frozen_tensors(self.model, self.groups, trainable)
            self._frozen_sums = checksums(list(self._frozen.values()))
            self._frozen_for = (stage_index, trainable)

    def record(self) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """This step's gradients, after unscaling and before clipping. Returns the total norm and the
        parameters it covers (what to clip with), or ``None`` when off or sharded (clip as usual)."""
        if not self.enabled or self._norms is None or self._steps >= len(self._norms):
            return None
        present = [(param, slot) for param, slot in self._members if param.grad is not None]
        if not present:
            self._steps += 1
            return None
        grads = [local(param.grad) for param, _ in present]
        norms = torch._foreach_norm(grads)  # one pass over the gradients, as clip_grad_norm_ makes
        stacked = torch.stack([norm.float() for norm in norms] if self._dtypes_differ else norms)
        if len(present) == len(self._members):  # every tensor has its gradient: the usual step
            index = self._slots
        else:
            index = torch.tensor([slot for _, slot in present], device=stacked.device)
        squared = torch.zeros(self._norms.shape[1], device=stacked.device).index_add_(0, index, stacked.float().square())
        self._norms[self._steps] = squared
        self._steps += 1
        if self.sharded:
            return None  # a shard's norm is not the total; clip_grad_norm_ reduces DTensors itself
        return torch.linalg.vector_norm(stacked), [param for param, _ in present]

    def end_epoch(self, *, stage_index: int, stage_name: str, where: str, clip: float | None, rates: dict[str, float]) -> dict[str, Any]:
        """The epoch's figures for the metrics row; warns, or raises :class:`FrozenMovedError` or
        :class:`GroupNotLearningError`, when a check fails."""
        if not self.enabled or self._norms is None:
            return {}
        steps = self._steps
        squared = self._norms[:steps]
        moved, start_sq = self._weight_changes()
        frozen_now = checksums(list(self._frozen.values()))
        frozen_changed = (frozen_now != self._frozen_sums).any(dim=1).to(torch.float32)
        if self.dist.enabled:  # once per epoch: shards' squares add up; a tensor moved on any rank counts
            if self.sharded:
                packed = torch.cat([squared.reshape(-1), moved, start_sq])
                distributed.all_reduce(self.dist, packed)
                squared = packed[: squared.numel()].reshape(squared.shape)
                moved, start_sq = packed[squared.numel():].chunk(2)
            frozen_changed = frozen_changed.to(squared.device)
            distributed.all_reduce(self.dist, frozen_changed, op=torch.distributed.ReduceOp.MAX)
        figures = self._figures(squared[:, : len(self.tracked)], moved.sqrt(), start_sq.sqrt(), clip, where)
        self._check_frozen([name for name, changed in zip(self._frozen, frozen_changed.tolist()) if changed], where)
        if steps:  # every step skipped for a non-finite loss: nothing to judge learning by
            self._check_learning(figures, stage_index, stage_name, rates)
        figures["frozen_checked"] = len(self._frozen)
        self._start = {}
        self._norms = None
        return figures

    def _weight_changes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tracked group, the squared norms of this epoch's change and of the starting weights."""
        if not self.tracked:
            empty = torch.zeros(0, device=self._norms.device if self._norms is not None else None)
            return empty, empty.clone()
        moved, start = [], []
        for group in self.tracked:
            now = [local(self._params[name]).detach() for name in self.groups.group(group).params]
            before = self._start[group]
            moved.append(_squared_norm(torch._foreach_sub(now, before)))
            start.append(_squared_norm(before))
        return torch.stack(moved), torch.stack(start)

    def _figures(self, squared: torch.Tensor, moved: torch.Tensor, start: torch.Tensor, clip: float | None, where: str) -> dict[str, Any]:
        norms = squared.sqrt()
        finite = torch.isfinite(norms)
        counted = finite.sum(dim=0).clamp(min=1)
        mean = torch.where(finite, norms, 0).sum(dim=0) / counted
        largest = torch.where(finite, norms, 0).amax(dim=0) if len(norms) else torch.zeros(len(self.tracked))
        ratio = torch.where(start > 0, moved / start.clamp(min=1e-30), moved)
        totals = squared.sum(dim=1).sqrt()
        host = torch.cat([mean, largest, ratio, moved, (totals > clip).sum().reshape(1) if clip else torch.zeros(1)]).tolist()
        groups = len(self.tracked)
        mean_, largest_, ratio_, moved_ = (host[i * groups: (i + 1) * groups] for i in range(4))
        figures: dict[str, Any] = {}
        for index, group in enumerate(self.tracked):
            figures[f"grad_norm/{group}"] = mean_[index]
            figures[f"grad_norm_max/{group}"] = largest_[index]
            figures[f"update_ratio/{group}"] = ratio_[index]
        if clip:
            figures["clipped"] = host[-1] / max(len(squared), 1)
        self._moved = dict(zip(self.tracked, moved_))
        bad_steps = (~finite).any(dim=1)
        if bool(bad_steps.any()):
            first = int(bad_steps.float().argmax())
            culprits = [group for group, bad in zip(self.tracked, (~finite[first]).tolist()) if bad]
            figures["grad_nonfinite_steps"] = int(bad_steps.sum())
            figures["grad_nonfinite_groups"] = culprits
            if self.dist.is_main:
                count = int(bad_steps.sum())
                # under an fp16 loss scaler such steps are skipped while it finds its scale: expected, not alarming
                (log.info if self.scaler else log.warning)(
                    "%s: the gradient norm of %s was NaN or infinite at step %d of the epoch first (%d step%s in all); %s",
                    where, ", ".join(f"'{group}'" for group in culprits), first + 1, count, "s" if count != 1 else "",
                    "the AMP loss scaler skipped those steps" if self.scaler else "the optimizer stepped with them, poisoning the weights",
                )  # fmt: skip
        return figures

    def _check_frozen(self, changed: list[str], where: str) -> None:
        if not changed:
            return
        owner = {name: self.groups.owner(name).name for name in changed if name in self._params}
        named = ", ".join(f"{name} ({'group ' + owner[name] if name in owner else 'frozen BatchNorm statistics'})" for name in changed[:SHOWN])
        more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        raise FrozenMovedError(
            f"{where}: frozen tensors changed although their groups do not train: {named}{more}; this is a bug in Zoo "
            "or in a plugin that touches the model during training (report it); this epoch's weights were not saved",
            tuple(changed),
        )

    def _check_learning(self, figures: dict[str, Any], stage_index: int, stage_name: str, rates: dict[str, float]) -> None:
        for group in self.tracked:
            if rates.get(group, 1.0) == 0:  # a rate of zero: the user asked for it to stand still
                continue
            silent = figures[f"grad_norm_max/{group}"] == 0
            still = self._moved.get(group, 1.0) == 0
            if not (silent or still) or (stage_index, group) in self._warned:
                continue
            self._warned.add((stage_index, group))
            off = [name for name in self.groups.group(group).params if not self._params[name].requires_grad]
            why = f"its gradient was zero at every step{' and its weights did not change' if still else ''}" if silent else "its weights did not change"
            hint = (
                f"; {len(off)} of its tensors do not require gradients ({', '.join(off[:SHOWN])}{' …' if len(off) > SHOWN else ''}): a plugin or task set requires_grad=False"
                if off else "; a plugin or task may cut it from the loss (torch.no_grad, .detach()) or a compiled graph may be stale"
            )  # fmt: skip
            message = f"stage {stage_index} ({stage_name or '-'}): group '{group}' trains in this stage but {why}{hint}"
            if self.strict:
                raise GroupNotLearningError(f"{message} (--strict-groups)", group)
            if self.dist.is_main:  # every rank knows; one says it
                log.warning("%s; --strict-groups makes this an error", message)


def stage_line(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> str | None:
    """One line for the end of a stage: each trained group's gradient norm and update ratio in its
    first and last epoch, and how many frozen tensors were checked unchanged; ``None`` without figures."""
    if not rows or "frozen_checked" not in rows[-1]:
        return None
    first, last = rows[0], rows[-1]
    parts = []
    for group in order:
        if f"grad_norm/{group}" not in last:
            continue
        span = lambda key, form: (  # noqa: E731
            f"{first[key]:{form}}→{last[key]:{form}}" if len(rows) > 1 and key in first else f"{last[key]:{form}}"
        )
        parts.append(f"{group} grad {span(f'grad_norm/{group}', '.3g')} update {span(f'update_ratio/{group}', '.2e')}")
    frozen = [group for group in order if f"grad_norm/{group}" not in last]
    still = f"; frozen {', '.join(frozen)}: {last['frozen_checked']} tensors unchanged" if frozen else ""
    return f"gradient flow: {'; '.join(parts) or 'no group trained'}{still}"
