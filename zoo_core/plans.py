"""The front door of transfer plans: names and paths in, a plan (and how to build its target) out.

``plan_transfer("old.pt", "timm:resnet50", num_classes=3)`` resolves each name once, reads
each file once, builds the target on the meta device once, gathers the rules (plugins <
the target family's < the caller's) and hands the pure planner (:mod:`zoo_core.transfer`)
its inputs. What it resolved comes back with the plan, so that writing the target later
builds it from the same spec without resolving again. ``import_weights`` is the same
check for ``zoo import``: a file is pinned only if it holds the named model's backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from .checkpoint import KNOWN_PREFIXES
from .errors import WeightsError
from .lockfile import LockEntry, LockFile
from .models import build_model, build_skeleton, has_own_weights
from .names import split_source
from .registry import Registry, default_registry
from .specs import ResolvedModel, Role, TransferRules
from .tensors import TensorSource
from .transfer import Action, PlanTarget, TransferPlan, plan
from .weights import fetch, import_file


@attrs.frozen
class TargetBuild:
    """How to build the planned target for real: the spec resolved while planning, and its options."""

    spec: ResolvedModel
    num_classes: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def build(self, registry: Registry) -> nn.Module:
        return build_model(self.spec, registry=registry, pretrained=False, num_classes=self.num_classes, **self.options)


@attrs.frozen
class Planned:
    """A plan and, when the target was a name, how to build it."""

    plan: TransferPlan
    build: TargetBuild | None = None


# --- the source ------------------------------------------------------------------------------------------


def tensor_source(
    source: Any, registry: Registry, *, strip: Sequence[str] = KNOWN_PREFIXES, num_classes: int | None = None
) -> TensorSource:
    """A checkpoint path (or ``file:PATH``), a registry name, a state dict or a module.

    A name with weights is fetched (verified against the lock); a name without weights of its
    own (a tier never trained) is described by its skeleton on the meta device, with
    ``num_classes`` when it has no class count of its own: a plan between two specs needs no
    weights.
    """
    if isinstance(source, TensorSource):
        return source
    if isinstance(source, nn.Module):
        return TensorSource.from_module(source)
    if isinstance(source, Mapping):
        return TensorSource.from_state_dict(source)
    text = str(source)
    prefix, body = split_source(text)
    path = Path(body if prefix == "file" else text).expanduser()
    if path.is_file():
        return TensorSource.from_file(path, strip=tuple(strip))
    spec = registry.resolve(text)
    if not has_own_weights(spec):
        classes = spec.num_classes or (num_classes if spec.tier is not None else None)
        return TensorSource.from_module(build_skeleton(spec, registry=registry, num_classes=classes), name=spec.name)
    located = fetch(spec)[0]
    return TensorSource.from_file(located.path, strip=tuple(strip), spec=spec, sha256=located.sha256)


# --- the target ------------------------------------------------------------------------------------------


def display_name(spec: ResolvedModel) -> str:
    """The target as built for a plan: its architecture, never the weights its tag names."""
    return f"{spec.source}:{spec.architecture}" if spec.tag and not spec.tier else spec.name


def _target_classes(spec: ResolvedModel, num_classes: int | None, source: TensorSource) -> tuple[int | None, tuple[str, ...] | None]:
    classes = spec.class_names if num_classes in (None, spec.num_classes) else None
    if num_classes is None and spec.tier is not None and spec.num_classes is None and source.class_names:
        return len(source.class_names), source.class_names  # a tier has no class count of its own: it takes the source's
    return num_classes, classes


def collect_rules(registry: Registry, source: TensorSource, target: ResolvedModel | None, extra: TransferRules | None) -> TransferRules:
    """Rules from ``zoo_transfer_rules`` hooks, then the target family's, then ``extra`` (CLI flags)."""
    rules = TransferRules()
    if target is not None:
        for contributed in registry.plugins.hook.zoo_transfer_rules(source=source.spec, target=target):
            rules = rules.merged(contributed)
        # a family's rules say what moves from one tier to another; weights carried back into
        # their own tier keep every tensor
        if target.tier is not None and source.model != target.name:
            rules = rules.merged(registry.family(target.tier.family).rules)
    return rules.merged(extra)


def plan_names(
    source: Any,
    target: Any,
    *,
    num_classes: int | None = None,
    rules: TransferRules | None = None,
    target_classes: Sequence[str] | None = None,
    in_chans: int | None = None,
    registry: Registry | None = None,
) -> Planned:
    """The plan from ``source`` into ``target`` (names, paths, state dicts or modules), and how to build the target."""
    registry = registry or default_registry()
    strip = rules.strip_prefixes if rules is not None and rules.strip_prefixes is not None else KNOWN_PREFIXES
    tensors = tensor_source(source, registry, strip=strip, num_classes=num_classes)
    if in_chans is not None:
        rules = (rules or TransferRules()).merged(TransferRules(input_channels=True))
    if isinstance(target, nn.Module):
        spec = getattr(target, "zoo_spec", None)
        name = display_name(spec) if spec is not None else type(target).__name__
        plan_target = PlanTarget.of(target, name=name, registry=registry, class_names=target_classes)
        return Planned(plan(tensors, plan_target, collect_rules(registry, tensors, spec, rules)))
    spec = registry.resolve(str(target))
    num_classes, default_classes = _target_classes(spec, num_classes, tensors)
    options = {"in_chans": in_chans} if in_chans is not None else {}
    skeleton = build_skeleton(spec, registry=registry, num_classes=num_classes, **options)
    classes = tuple(target_classes) if target_classes else default_classes
    plan_target = PlanTarget.of(skeleton, name=display_name(spec), registry=registry, class_names=classes)
    planned = plan(tensors, plan_target, collect_rules(registry, tensors, spec, rules))
    return Planned(planned, TargetBuild(spec, num_classes, options))


def plan_transfer(
    source: Any,
    target: Any,
    *,
    num_classes: int | None = None,
    rules: TransferRules | None = None,
    target_classes: Sequence[str] | None = None,
    in_chans: int | None = None,
    registry: Registry | None = None,
) -> TransferPlan:
    """Plan carrying weights from ``source`` into ``target`` without loading tensor data.

    :param source: a checkpoint path, a registry name (its pretrained weights, or its shapes
        when it has none), a state dict or a module.
    :param target: a registry name (built on the meta device) or a module.
    :param num_classes: classes of the target's classifier.
    :param rules: rules that override hook and registry rules (CLI flags).
    :param target_classes: class names of the target, for class-aware classifier rows.
    :param in_chans: input channels of the target (its first convolution is adapted).
    """
    return plan_names(
        source, target, num_classes=num_classes, rules=rules, target_classes=target_classes, in_chans=in_chans, registry=registry
    ).plan


# --- zoo import -------------------------------------------------------------------------------------------


def check_fits(resolved: ResolvedModel, file: Path, registry: Registry) -> None:
    """Refuse a file whose tensors do not cover the model's backbone (weights of another model)."""
    skeleton = build_skeleton(resolved, registry=registry, num_classes=resolved.num_classes or (1 if resolved.tier else None))
    target = PlanTarget.of(skeleton, name=resolved.name, registry=registry)
    planned = plan(TensorSource.from_file(file), target, TransferRules(suffix_match=False))
    covered = planned.coverage_of("backbone")
    if covered < 1.0:
        missing = [e.target for e in planned.entries if e.role is Role.BACKBONE and e.action is Action.NEW and not e.counter]
        raise WeightsError(
            f"{file}: does not hold weights for {resolved.name}: only {covered:.0%} of its backbone is covered "
            f"(e.g. {', '.join(missing[:3])} have no matching tensor); check that the file belongs to this model"
        )


def import_weights(name: str, file: Path | str, *, registry: Registry | None = None, lock: LockFile | None = None) -> LockEntry:
    """``zoo import``: check that ``file`` holds weights of ``name``, then store and pin it."""
    registry = registry or default_registry()
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{file}: no such file to import")
    resolved = registry.resolve(name)
    check_fits(resolved, file, registry)  # also refuses unsafe, corrupt or tensor-less files
    return import_file(resolved, file, lock)
