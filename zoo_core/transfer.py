"""TransferPlan: what carrying weights from a source into a target will do, before it does it.

Every target tensor gets an action — ``copy``, ``rename``, ``adapt``, ``remap-classes`` or
``new`` (left at its initialisation) — and every unused source tensor a reason —
``excluded``, ``shape`` or ``no target``. Coverage is reported per layer group and role, and a
policy (``backbone >= 1.0``) or strict mode can refuse the plan. Plans are computed from
shapes alone: a safetensors header or a memory-mapped torch file for the source, the target
built on the meta device. :meth:`TransferPlan.apply` then reads only the tensors it needs.

Rules, merged in order: ``zoo_transfer_rules`` hooks < the target family's registry rules <
rules passed by the caller (CLI flags). Matching: include/exclude regexes, rename regex pairs
applied to source keys (MMEngine's ``revise_keys``), exact names, then dotted-suffix matching
as a fallback (Detectron2's alignment; ties are errors).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .checkpoint import KNOWN_PREFIXES, TensorInfo, check_finite, read_checkpoint, read_tensor_info
from .errors import TransferError
from .groups import LayerGroups, layer_groups
from .paths import display
from .specs import ResolvedModel, Role, ShapePolicy, TransferRules

log = logging.getLogger(__name__)


class Action(enum.Enum):
    COPY = "copy"
    RENAME = "rename"
    ADAPT = "adapt"
    REMAP_CLASSES = "remap-classes"
    NEW = "new"


class Unused(enum.Enum):
    EXCLUDED = "excluded"
    SHAPE = "shape"
    NO_TARGET = "no target"


@attrs.frozen
class PlanEntry:
    target: str
    action: Action
    shape: tuple[int, ...]
    group: str
    role: str
    source: str | None = None
    source_shape: tuple[int, ...] | None = None
    note: str = ""
    covered: float = 1.0  # share of the tensor that gets source values (class rows remapped by name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "action": self.action.value,
            "source": self.source,
            "shape": list(self.shape),
            "source_shape": list(self.source_shape) if self.source_shape is not None else None,
            "group": self.group,
            "role": self.role,
            "note": self.note,
        }


@attrs.frozen
class UnusedSource:
    source: str
    reason: Unused
    shape: tuple[int, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason.value, "shape": list(self.shape), "note": self.note}


@attrs.frozen
class Coverage:
    name: str
    role: str
    covered: int
    total: int
    tensors: int
    tensors_covered: int

    @property
    def fraction(self) -> float:
        return self.covered / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "covered": self.covered,
            "total": self.total,
            "fraction": round(self.fraction, 6),
            "tensors": self.tensors,
            "tensors_covered": self.tensors_covered,
        }


# --- tensor transformations ---------------------------------------------------------------------------


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


def remap_rows(source: torch.Tensor, source_classes: Sequence[str], target: torch.Tensor, target_classes: Sequence[str]) -> torch.Tensor:
    """Rows of classes both sides name are copied by class name; other rows keep ``target``'s values."""
    result = target.detach().clone()
    index = {name: row for row, name in enumerate(source_classes)}
    for row, name in enumerate(target_classes):
        if name in index:
            result[row] = source[index[name]].to(result.dtype)
    return result


# --- the plan --------------------------------------------------------------------------------------------


@attrs.define
class TensorSource:
    """Where the source tensors come from: a file (read lazily) or tensors in memory."""

    name: str
    info: dict[str, TensorInfo]
    path: Path | None = None
    tensors: Mapping[str, torch.Tensor] | None = None
    strip: tuple[str, ...] = KNOWN_PREFIXES
    class_names: tuple[str, ...] | None = None
    spec: ResolvedModel | None = None
    sha256: str | None = None
    provenance: Mapping[str, Any] = attrs.field(factory=dict)

    def load(self) -> Mapping[str, torch.Tensor]:
        if self.tensors is None:
            self.tensors = read_checkpoint(self.path, strip=self.strip, mmap=True).state_dict
        return self.tensors


class TransferPlan:
    """The computed plan; see the module docstring."""

    def __init__(
        self,
        *,
        source: TensorSource,
        target_name: str,
        entries: list[PlanEntry],
        unused: list[UnusedSource],
        coverage: list[Coverage],
        rules: TransferRules,
        target_classes: Sequence[str] | None,
    ) -> None:
        self.source = source
        self.target_name = target_name
        self.entries = entries
        self.unused = unused
        self.coverage = coverage
        self.rules = rules
        self.target_classes = tuple(target_classes) if target_classes else None

    # -- reading the plan -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = Counter(entry.action.value for entry in self.entries)
        return {action.value: counts.get(action.value, 0) for action in Action}

    def unused_counts(self) -> dict[str, int]:
        counts = Counter(item.reason.value for item in self.unused)
        return {reason.value: counts.get(reason.value, 0) for reason in Unused}

    def coverage_of(self, selector: str) -> float:
        """Covered fraction of a group name, or of a role aggregated over its groups."""
        rows = [row for row in self.coverage if row.name == selector] or [
            row for row in self.coverage if row.role == ("head" if selector == "heads" else selector)
        ]
        if not rows:
            names = sorted({row.name for row in self.coverage} | {row.role for row in self.coverage})
            raise TransferError(f"coverage policy names '{selector}', which is no group or role (choose from {', '.join(names)})")
        total = sum(row.total for row in rows)
        return sum(row.covered for row in rows) / total if total else 1.0

    def summary(self) -> str:
        counts = self.counts()
        moved = sum(counts[a] for a in ("copy", "rename", "adapt", "remap-classes"))
        unused = sum(self.unused_counts().values())
        return (
            f"{moved}/{len(self.entries)} target tensors carried "
            + f"({', '.join(f'{n} {a}' for a, n in counts.items() if n)}); {unused} source tensors unused"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": {
                "name": self.source.name,
                "path": str(self.source.path) if self.source.path else None,
                "sha256": self.source.sha256,
                "class_names": list(self.source.class_names) if self.source.class_names else None,
            },
            "target": {"name": self.target_name, "class_names": list(self.target_classes) if self.target_classes else None},
            "rules": self.rules.to_dict(),
            "counts": self.counts(),
            "unused_counts": self.unused_counts(),
            "coverage": [row.to_dict() for row in self.coverage],
            "entries": [entry.to_dict() for entry in self.entries],
            "unused": [item.to_dict() for item in self.unused],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def report(self, *, verbose: bool = False) -> str:
        """A table: coverage per layer group, then the tensors that are not plain copies."""
        lines = [f"transfer {self.source.name} -> {self.target_name}", ""]
        lines.append(f"{'group':<24} {'role':<9} {'coverage':>9} {'tensors':>9}  actions")
        actions_by_group: dict[str, Counter[str]] = {}
        for entry in self.entries:
            actions_by_group.setdefault(entry.group, Counter())[entry.action.value] += 1
        for row in self.coverage:
            actions = ", ".join(f"{n} {a}" for a, n in sorted(actions_by_group.get(row.name, Counter()).items()))
            lines.append(
                f"{row.name:<24} {row.role:<9} {row.fraction:>8.1%} {row.tensors_covered:>4}/{row.tensors:<4}  {actions}"
            )
        notable = [e for e in self.entries if verbose or (e.action is not Action.COPY and (e.action is not Action.NEW or e.note))]
        silent_new = sum(1 for e in self.entries if e.action is Action.NEW and not e.note)
        if notable:
            lines += ["", f"{'target tensor':<48} {'action':<14} source / note"]
            for entry in notable:
                detail = entry.source or ""
                if entry.note:
                    detail = f"{detail} ({entry.note})" if detail else entry.note
                lines.append(f"{entry.target:<48} {entry.action.value:<14} {detail}")
        if silent_new and not verbose:
            lines.append(f"{silent_new} target tensors have no source and stay new (--verbose-plan lists them)")
        if self.unused:
            lines += ["", f"{'unused source tensor':<48} {'reason':<14} note"]
            for item in self.unused:
                lines.append(f"{item.source:<48} {item.reason.value:<14} {item.note}")
        lines += ["", self.summary()]
        return "\n".join(lines)

    # -- enforcing and applying -----------------------------------------------------------------------

    def enforce(self, require: Mapping[str, float] | None = None, strict: bool = False) -> None:
        """Refuse the plan when a coverage policy or strict mode is not met."""
        for selector, minimum in (require or {}).items():
            got = self.coverage_of(selector)
            if got + 1e-12 < minimum:
                left = [e.target for e in self.entries if e.action is Action.NEW and (e.group == selector or e.role == selector)]
                raise TransferError(
                    f"coverage policy not met: {selector} is {got:.1%} covered, {minimum:.0%} required "
                    f"({len(left)} tensors would stay new, e.g. {', '.join(left[:3]) or '-'}); add --rename rules "
                    f"or relax --require {selector}={got:.2f}"
                )
        if strict:
            order = {key: index for index, key in enumerate(self.source.info)}
            mismatched = sorted((item for item in self.unused if item.reason is Unused.SHAPE), key=lambda i: order[i.source])
            if mismatched:
                item = mismatched[0]
                raise TransferError(
                    f"strict transfer: source '{item.source}' {list(item.shape)} does not fit ({item.note}); "
                    "allow it with --shape adapt, exclude it, or drop --strict"
                )
            new = [entry.target for entry in self.entries if entry.action is Action.NEW]
            if new:
                raise TransferError(
                    f"strict transfer: {len(new)} target tensors have no source (e.g. {', '.join(new[:3])}); "
                    "add --rename rules or drop --strict"
                )

    def apply(self, model: nn.Module) -> dict[str, Any]:
        """Write the planned tensors into ``model``; nothing is written if any check fails.

        :return: the plan as a dict, for provenance.
        :raises TransferError: when ``model`` is not the planned target or a source is not finite.
        """
        state = model.state_dict()
        for entry in self.entries:
            if entry.target not in state or tuple(state[entry.target].shape) != entry.shape:
                raise TransferError(
                    f"the model does not match the plan's target {self.target_name}: tensor '{entry.target}' "
                    f"{list(entry.shape)} is missing or has another shape; plan again against this model"
                )
        carried = [entry for entry in self.entries if entry.action is not Action.NEW]
        source_tensors = self.source.load()
        values = {entry.source: source_tensors[entry.source] for entry in carried}
        check_finite(values, self.source.name)
        new_values = {entry.target: self._value(entry, values[entry.source], state[entry.target]) for entry in carried}
        with torch.no_grad():
            for target, value in new_values.items():
                state[target].copy_(value.to(device=state[target].device, dtype=state[target].dtype))
        log.info("transfer applied: %s", self.summary())
        return self.to_dict()

    def _value(self, entry: PlanEntry, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if entry.action in (Action.COPY, Action.RENAME):
            return source
        if entry.action is Action.REMAP_CLASSES:
            return remap_rows(source, self.source.class_names or (), target, self.target_classes or ())
        if entry.note.startswith("input channels"):
            return adapt_input_channels(source, target.shape[1])
        return truncate_or_pad(source, target)


# --- planning ---------------------------------------------------------------------------------------------


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(pattern) for pattern in patterns]


def _suffix_score(target: str, source: str) -> int:
    """Components of the shorter key when it is a whole dotted suffix of the longer, else 0."""
    t, s = target.split("."), source.split(".")
    shorter = min(len(t), len(s))
    return shorter if t[-shorter:] == s[-shorter:] else 0


def key_groups(state_keys: Sequence[str], groups: LayerGroups) -> dict[str, tuple[str, str]]:
    """Each state-dict key's (group, role); buffers join the group of their module's parameters."""
    owners: dict[str, tuple[str, str]] = {}
    module_owner: dict[str, tuple[str, str]] = {}
    for group in groups:
        for param in group.params:
            owners[param] = (group.name, group.role.value)
            module_owner.setdefault(param.rsplit(".", 1)[0] if "." in param else "", (group.name, group.role.value))
    for key in state_keys:
        if key in owners:
            continue
        module = key.rsplit(".", 1)[0] if "." in key else ""
        while module not in module_owner and module:
            module = module.rsplit(".", 1)[0] if "." in module else ""
        owners[key] = module_owner.get(module, ("(buffers)", "backbone"))
    return owners


def plan_from_info(
    source: TensorSource,
    target_info: Mapping[str, TensorInfo],
    target_groups: LayerGroups,
    *,
    target_name: str,
    rules: TransferRules,
    classifier_keys: Sequence[str] = (),
    first_conv: str | None = None,
    target_classes: Sequence[str] | None = None,
) -> TransferPlan:
    """The core matcher, on shapes only (see the module docstring)."""
    include, exclude = _compile(rules.include), _compile(rules.exclude)
    renames = [(re.compile(pattern), replacement) for pattern, replacement in rules.rename]
    shape_policy = rules.shape or ShapePolicy.SKIP
    class_aware = rules.class_aware is not False and bool(source.class_names) and bool(target_classes)
    unused: dict[str, UnusedSource] = {}
    candidates: dict[str, tuple[str, bool]] = {}  # target key -> (source key, renamed)

    for key, info in source.info.items():
        mapped = key
        for pattern, replacement in renames:
            mapped = pattern.sub(replacement, mapped)
        names = {key, mapped}
        if any(p.search(n) for p in exclude for n in names) or (include and not any(p.search(mapped) for p in include)):
            note = "excluded by rules" if mapped == key else f"excluded by rules as {mapped}"
            unused[key] = UnusedSource(key, Unused.EXCLUDED, info.shape, note)
            continue
        if mapped in candidates:
            other = candidates[mapped][0]
            raise TransferError(
                f"rename rules map two source tensors onto '{mapped}': '{other}' and '{key}'; make the rules more specific"
            )
        candidates[mapped] = (key, mapped != key)

    owners = key_groups(list(target_info), target_groups)
    used: set[str] = set()
    entries: list[PlanEntry] = []
    pending_suffix: list[str] = []
    for target, info in target_info.items():
        group, role = owners[target]
        if any(p.search(target) for p in exclude):
            entries.append(PlanEntry(target, Action.NEW, info.shape, group, role, note="excluded by rules"))
            continue
        match = candidates.get(target)
        if match is None:
            pending_suffix.append(target)
            entries.append(PlanEntry(target, Action.NEW, info.shape, group, role))
            continue
        entries.append(_decide(target, info, match[0], match[1], source, group, role, shape_policy, class_aware,
                               classifier_keys, first_conv, target_classes, unused))
        used.add(match[0])

    if rules.suffix_match is not False and pending_suffix:
        entries = _suffix_fallback(entries, pending_suffix, source, candidates, used, unused, shape_policy,
                                   class_aware, classifier_keys, first_conv, target_classes)

    for key, info in source.info.items():
        if key not in used and key not in unused:
            unused[key] = UnusedSource(key, Unused.NO_TARGET, info.shape, "the target has no such tensor")
    coverage = _coverage(entries, target_groups)
    return TransferPlan(
        source=source,
        target_name=target_name,
        entries=entries,
        unused=[unused[key] for key in sorted(unused)],  # the same order whatever the file format
        coverage=coverage,
        rules=rules,
        target_classes=target_classes,
    )


def _decide(
    target: str,
    info: TensorInfo,
    source_key: str,
    renamed: bool,
    source: TensorSource,
    group: str,
    role: str,
    shape_policy: ShapePolicy,
    class_aware: bool,
    classifier_keys: Sequence[str],
    first_conv: str | None,
    target_classes: Sequence[str] | None,
    unused: dict[str, UnusedSource],
    note: str = "",
) -> PlanEntry:
    source_shape = source.info[source_key].shape
    base = {"shape": info.shape, "group": group, "role": role, "source": source_key, "source_shape": source_shape}
    if class_aware and target in classifier_keys:
        source_classes = source.class_names or ()
        if source_shape[:1] == (len(source_classes),) and info.shape[:1] == (len(target_classes),) and source_shape[1:] == info.shape[1:]:
            if list(source_classes) != list(target_classes):
                shared = len(set(source_classes) & set(target_classes))
                if shared == 0:  # rows of other classes would mislabel: nothing to carry
                    unused[source_key] = UnusedSource(source_key, Unused.NO_TARGET, source_shape, "no class in common with the target")
                    return PlanEntry(target, Action.NEW, info.shape, group, role, note=f"no class in common with {source_key}")
                return PlanEntry(
                    target, Action.REMAP_CLASSES, note=f"{shared} of {len(target_classes)} classes by name",
                    covered=shared / len(target_classes), **base,
                )
    if source_shape == info.shape:
        action = Action.RENAME if renamed or note else Action.COPY
        return PlanEntry(target, action, note=note, **base)
    if shape_policy is ShapePolicy.ADAPT and len(source_shape) == len(info.shape):
        if (
            target == first_conv
            and len(info.shape) == 4
            and source_shape[0] == info.shape[0]
            and source_shape[2:] == info.shape[2:]
        ):
            return PlanEntry(target, Action.ADAPT, note=f"input channels {source_shape[1]}->{info.shape[1]}", **base)
        return PlanEntry(target, Action.ADAPT, note=f"truncate/pad {list(source_shape)}->{list(info.shape)}", **base)
    unused[source_key] = UnusedSource(source_key, Unused.SHAPE, source_shape, f"target {target} is {list(info.shape)}")
    return PlanEntry(target, Action.NEW, info.shape, group, role, note=f"source {source_key} has shape {list(source_shape)}")


def _suffix_fallback(
    entries: list[PlanEntry],
    pending: Sequence[str],
    source: TensorSource,
    candidates: Mapping[str, tuple[str, bool]],
    used: set[str],
    unused: dict[str, UnusedSource],
    shape_policy: ShapePolicy,
    class_aware: bool,
    classifier_keys: Sequence[str],
    first_conv: str | None,
    target_classes: Sequence[str] | None,
) -> list[PlanEntry]:
    """Match leftover targets to leftover sources that share the longest dotted suffix."""
    free = {mapped: key for mapped, (key, _) in candidates.items() if key not in used and key not in unused}
    by_target = {entry.target: entry for entry in entries}
    claimed: dict[str, str] = {}
    for target in pending:
        # at least two components ("conv1.weight"), so a bare "weight" never matches everything
        scored = [(score, mapped) for mapped in free if (score := _suffix_score(target, mapped)) >= 2]
        if not scored:
            continue
        best = max(score for score, _ in scored)
        tied = [mapped for score, mapped in scored if score == best]
        fewest = min(len(mapped.split(".")) for mapped in tied)
        winners = [mapped for mapped in tied if len(mapped.split(".")) == fewest]
        if len(winners) > 1:
            raise TransferError(
                f"ambiguous suffix match for target '{target}': source tensors {', '.join(repr(free[w]) for w in winners[:3])} "
                "fit equally well; add a --rename rule or disable suffix matching"
            )
        mapped = winners[0]
        if mapped in claimed:
            raise TransferError(
                f"ambiguous suffix match: source '{free[mapped]}' fits both '{claimed[mapped]}' and '{target}'; add a --rename rule"
            )
        claimed[mapped] = target
    for mapped, target in claimed.items():
        entry = by_target[target]
        source_key = free[mapped]
        info = TensorInfo(entry.shape, "")
        by_target[target] = _decide(target, info, source_key, True, source, entry.group, entry.role, shape_policy,
                                    class_aware, classifier_keys, first_conv, target_classes, unused, note="suffix match")
        used.add(source_key)
    return [by_target[entry.target] for entry in entries]


def _coverage(entries: Sequence[PlanEntry], groups: LayerGroups) -> list[Coverage]:
    order = [group.name for group in groups]
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        row = rows.setdefault(entry.group, {"role": entry.role, "covered": 0, "total": 0, "tensors": 0, "done": 0})
        row["total"] += entry.numel
        row["tensors"] += 1
        if entry.action is not Action.NEW:
            row["covered"] += round(entry.numel * entry.covered)
            row["done"] += 1
    ordered = [name for name in order if name in rows] + [name for name in rows if name not in order]
    return [
        Coverage(name, rows[name]["role"], rows[name]["covered"], rows[name]["total"], rows[name]["tensors"], rows[name]["done"])
        for name in ordered
    ]


# --- the public entry point ---------------------------------------------------------------------------------


def _tensor_source(source: Any, registry: Any, strip: Sequence[str]) -> TensorSource:
    """A checkpoint path, a registry name with pretrained weights, a state dict or a module."""
    from .weights import fetch

    if isinstance(source, nn.Module):
        state = source.state_dict()
        info = {k: TensorInfo(tuple(v.shape), str(v.dtype)) for k, v in state.items()}
        spec = getattr(source, "zoo_spec", None)
        return TensorSource(type(source).__name__, info, tensors=state, spec=spec,
                            class_names=spec.class_names if spec else None)
    if isinstance(source, Mapping):
        info = {k: TensorInfo(tuple(v.shape), str(v.dtype)) for k, v in source.items()}
        return TensorSource("state dict", info, tensors=dict(source))
    text = str(source)
    path = Path(text)
    spec = None
    if path.is_file():
        name = display(path)
    else:
        spec = registry.resolve(text)
        path = fetch(spec)[0].path
        name = spec.name
    info, meta = read_tensor_info(path, strip=strip)
    provenance = meta.get("provenance") or {}
    classes = provenance.get("class_names") or (spec.class_names if spec else None)
    return TensorSource(
        name,
        info,
        path=path,
        strip=tuple(strip),
        class_names=tuple(classes) if classes else None,
        spec=spec,
        provenance=provenance,
    )


def _target_model(
    target: Any, registry: Any, num_classes: int | None, source_classes: Sequence[str] | None
) -> tuple[nn.Module, str, ResolvedModel | None, Sequence[str] | None]:
    """The target model (meta device for names), its name, spec and class names."""
    from .models import build_skeleton

    if isinstance(target, nn.Module):
        spec = getattr(target, "zoo_spec", None)
        return target, (spec.name if spec else type(target).__name__), spec, None
    spec = registry.resolve(str(target))
    classes = spec.class_names if num_classes in (None, spec.num_classes) else None
    if num_classes is None and spec.tier is not None and spec.num_classes is None and source_classes:
        # a tier has no class count of its own: it takes the source's classes
        num_classes, classes = len(source_classes), source_classes
    return build_skeleton(spec, registry=registry, num_classes=num_classes), spec.name, spec, classes


def source_model(source: TensorSource) -> str | None:
    """The registry name of the architecture the source tensors belong to, when known."""
    if source.spec is not None:
        return source.spec.name
    return source.provenance.get("model") or None


def collect_rules(registry: Any, source: TensorSource, target_spec: ResolvedModel | None, extra: TransferRules | None) -> TransferRules:
    rules = TransferRules()
    if target_spec is not None:
        for contributed in registry.plugins.hook.zoo_transfer_rules(source=source.spec, target=target_spec):
            rules = rules.merged(contributed)
        # a family's rules say what moves from one tier to another; weights carried back into
        # their own tier keep every tensor
        if target_spec.tier is not None and source_model(source) != target_spec.name:
            rules = rules.merged(registry.family(target_spec.tier.family).rules)
    return rules.merged(extra)


def plan_transfer(
    source: Any,
    target: Any,
    *,
    num_classes: int | None = None,
    rules: TransferRules | None = None,
    target_classes: Sequence[str] | None = None,
    registry: Any = None,
) -> TransferPlan:
    """Plan carrying weights from ``source`` into ``target`` without loading tensor data.

    :param source: a checkpoint path, a registry name (its pretrained weights), a state dict or
        a module.
    :param target: a registry name (built on the meta device) or a module.
    :param num_classes: classes of the target's classifier.
    :param rules: rules that override hook and registry rules (CLI flags).
    :param target_classes: class names of the target, for class-aware classifier rows.
    """
    from .heads import find_classifier, output_layer
    from .registry import default_registry

    registry = registry or default_registry()
    strip = rules.strip_prefixes if rules is not None and rules.strip_prefixes is not None else KNOWN_PREFIXES
    tensor_source = _tensor_source(source, registry, strip)
    model, target_name, target_spec, default_classes = _target_model(
        target, registry, num_classes, None if target_classes else tensor_source.class_names
    )
    target_classes = target_classes or default_classes
    merged = collect_rules(registry, tensor_source, target_spec, rules)
    state = model.state_dict()
    target_info = {key: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in state.items()}
    groups = layer_groups(model, registry=registry)
    classifier_keys: list[str] = []
    try:
        head_name, head = find_classifier(model)
        out = output_layer(head)
        out_name = next(name for name, module in model.named_modules() if module is out)
        classifier_keys = [f"{out_name}.weight", f"{out_name}.bias"]
    except Exception:  # headless targets have no class rows
        pass
    first_conv = next((key for key, t in state.items() if t.dim() == 4 and key.endswith("weight")), None)
    return plan_from_info(
        tensor_source,
        target_info,
        groups,
        target_name=target_name,
        rules=merged,
        classifier_keys=classifier_keys,
        first_conv=first_conv,
        target_classes=target_classes,
    )


def validate_source(plan: TransferPlan) -> None:
    """Seed 000's source checks: every tensor the plan carries must be finite."""
    tensors = plan.source.load()
    needed = {entry.source: tensors[entry.source] for entry in plan.entries if entry.source and entry.action is not Action.NEW}
    check_finite(needed, plan.source.name)


__all__ = [
    "Action",
    "Unused",
    "TransferPlan",
    "plan_transfer",
    "plan_from_info",
    "adapt_input_channels",
    "truncate_or_pad",
    "remap_rows",
    "Role",
]
