"""TransferPlan: what carrying weights from a source into a target will do, before it does it.

This module is the planner alone: it takes a :class:`~zoo_core.tensors.TensorSource` (a
safetensors header, a memory-mapped torch file, a state dict) and a :class:`PlanTarget` (the
target's tensor shapes, layer groups and class rows), and decides from shapes only. It never
resolves a name, fetches a file or builds a model: :mod:`zoo_core.plans` does that for names
and paths.

Every target tensor gets an action — ``copy``, ``rename``, ``adapt``, ``remap-classes`` or
``new`` (left at its initialisation) — and every unused source tensor a reason —
``excluded``, ``shape`` or ``no target``. Coverage is reported per layer group and role
(integer counters such as BatchNorm's ``num_batches_tracked`` are no weights and count for
nothing), and a policy (``backbone >= 1.0``) or strict mode can refuse the plan.
:meth:`TransferPlan.apply` then reads only the tensors it needs.

Matching, in order: rename regex pairs applied to source keys (MMEngine's ``revise_keys``),
include/exclude regexes (a source key the include rules refuse is tried under the target's
top-level prefixes, so a bare backbone's keys are a tier's ``backbone.*``), exact names, then
dotted-suffix matching as a fallback (Detectron2's alignment, in both directions; ties are
errors).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from .anatomy import class_rows, first_conv_key
from .checkpoint import TensorInfo, check_finite
from .errors import TransferError
from .groups import LayerGroups, layer_groups
from .registry import Registry
from .specs import Role, ShapePolicy, TransferRules
from .tensorops import ClassRows, adapt_input_channels, remap_rows, truncate_or_pad
from .tensors import TensorSource

log = logging.getLogger(__name__)


class Action(enum.Enum):
    COPY = "copy"
    RENAME = "rename"
    ADAPT = "adapt"
    REMAP_CLASSES = "remap-classes"
    NEW = "new"


CARRIED = (Action.COPY, Action.RENAME, Action.ADAPT, Action.REMAP_CLASSES)


class Unused(enum.Enum):
    EXCLUDED = "excluded"
    SHAPE = "shape"
    NO_TARGET = "no target"


class Adaptation(enum.Enum):
    """How an ``adapt`` entry changes the source tensor's shape."""

    INPUT_CHANNELS = "input channels"  # a first convolution, as timm's adapt_input_conv
    TRUNCATE_PAD = "truncate/pad"  # the overlap is copied, the rest keeps its initialisation


def is_counter(dtype: str) -> bool:
    """Integer and boolean tensors (``num_batches_tracked``) count steps, they hold no weights."""
    return dtype.startswith(("int", "uint", "bool"))


@attrs.frozen
class PlanEntry:
    target: str
    action: Action
    shape: tuple[int, ...]
    group: str
    role: Role
    source: str | None = None
    source_shape: tuple[int, ...] | None = None
    note: str = ""
    covered: float = 1.0  # share of the tensor that gets source values (class rows remapped by name)
    adaptation: Adaptation | None = None
    counter: bool = False

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
            "role": self.role.value,
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
    role: Role
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
            "role": self.role.value,
            "covered": self.covered,
            "total": self.total,
            "fraction": round(self.fraction, 6),
            "tensors": self.tensors,
            "tensors_covered": self.tensors_covered,
        }


@attrs.frozen
class PlanTarget:
    """What the planner needs to know of the target: shapes, groups, class rows, first convolution."""

    name: str
    info: Mapping[str, TensorInfo]
    groups: LayerGroups
    class_rows: Mapping[str, ClassRows] = attrs.field(factory=dict)
    first_conv: str | None = None
    class_names: tuple[str, ...] | None = None

    @classmethod
    def of(cls, model: nn.Module, *, name: str, registry: Registry, class_names: Sequence[str] | None = None) -> PlanTarget:
        """The target a model is (on the meta device or not): its shapes, groups and class rows."""
        state = model.state_dict()
        return cls(
            name,
            {key: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in state.items()},
            layer_groups(model, registry=registry),
            class_rows=class_rows(model, registry.plugins.hook),
            first_conv=first_conv_key(state),
            class_names=tuple(class_names) if class_names else None,
        )


def _role_of(selector: str) -> Role | None:
    try:
        return Role("head" if selector == "heads" else selector)
    except ValueError:
        return None


class TransferPlan:
    """The computed plan; see the module docstring."""

    def __init__(
        self, *, source: TensorSource, target: PlanTarget, entries: list[PlanEntry], unused: list[UnusedSource], rules: TransferRules
    ) -> None:
        self.source = source
        self.target = target
        self.entries = entries
        self.unused = unused
        self.rules = rules
        self.coverage = _coverage(entries, target.groups)

    @property
    def target_name(self) -> str:
        return self.target.name

    @property
    def target_classes(self) -> tuple[str, ...] | None:
        return self.target.class_names

    # -- reading the plan -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = Counter(entry.action.value for entry in self.entries)
        return {action.value: counts.get(action.value, 0) for action in Action}

    def unused_counts(self) -> dict[str, int]:
        counts = Counter(item.reason.value for item in self.unused)
        return {reason.value: counts.get(reason.value, 0) for reason in Unused}

    def _rows(self, selector: str) -> list[Coverage]:
        """Coverage rows of a group name, or of every group of a role (``heads`` means ``head``)."""
        rows = [row for row in self.coverage if row.name == selector]
        role = _role_of(selector)
        if not rows and role is not None:
            rows = [row for row in self.coverage if row.role is role]
        if not rows:
            names = sorted({row.name for row in self.coverage} | {row.role.value for row in self.coverage})
            raise TransferError(f"coverage policy names '{selector}', which is no group or role (choose from {', '.join(names)})")
        return rows

    def coverage_of(self, selector: str) -> float:
        """Covered fraction of a group name, or of a role aggregated over its groups."""
        rows = self._rows(selector)
        total = sum(row.total for row in rows)
        return sum(row.covered for row in rows) / total if total else 1.0

    def summary(self) -> str:
        counts = self.counts()
        moved = sum(counts[action.value] for action in CARRIED)
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
            "target": {"name": self.target.name, "class_names": list(self.target.class_names) if self.target.class_names else None},
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
        lines = [f"transfer {self.source.name} -> {self.target.name}", ""]
        lines.append(f"{'group':<24} {'role':<9} {'coverage':>9} {'tensors':>9}  actions")
        actions_by_group: dict[str, Counter[str]] = {}
        for entry in self.entries:
            actions_by_group.setdefault(entry.group, Counter())[entry.action.value] += 1
        for row in self.coverage:
            actions = ", ".join(f"{n} {a}" for a, n in sorted(actions_by_group.get(row.name, Counter()).items()))
            lines.append(
                f"{row.name:<24} {row.role.value:<9} {row.fraction:>8.1%} {row.tensors_covered:>4}/{row.tensors:<4}  {actions}"
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
            lines += [f"{item.source:<48} {item.reason.value:<14} {item.note}" for item in self.unused]
        lines += ["", self.summary()]
        return "\n".join(lines)

    # -- enforcing and applying -----------------------------------------------------------------------

    def enforce(self, require: Mapping[str, float] | None = None, strict: bool = False) -> None:
        """Refuse the plan when a coverage policy or strict mode is not met."""
        for selector, minimum in (require or {}).items():
            self._enforce_coverage(selector, minimum)
        if strict:
            self._enforce_strict()

    def _enforce_coverage(self, selector: str, minimum: float) -> None:
        rows = self._rows(selector)
        covered, total = sum(row.covered for row in rows), sum(row.total for row in rows)
        if total == 0 or covered >= minimum * total - 1e-9:
            return
        names = {row.name for row in rows}
        left = [e.target for e in self.entries if e.action is Action.NEW and not e.counter and e.group in names]
        got = covered / total
        shown = math.floor(got * 1000) / 10  # never rounded up to the 100% it misses
        relax = math.floor(got * 100) / 100
        raise TransferError(
            f"coverage policy not met: {selector} is {shown:.1f}% covered ({covered:,} of {total:,} values), "
            f"{minimum:.0%} required ({len(left)} tensors would stay new, e.g. {', '.join(left[:3]) or '-'}); "
            f"add --rename rules or relax --require {selector}={relax:.2f}"
        )

    def _enforce_strict(self) -> None:
        order = {key: index for index, key in enumerate(self.source.info)}
        mismatched = sorted((item for item in self.unused if item.reason is Unused.SHAPE), key=lambda i: order[i.source])
        if mismatched:
            item = mismatched[0]
            raise TransferError(
                f"strict transfer: source '{item.source}' {list(item.shape)} does not fit ({item.note}); "
                "allow it with --shape adapt, exclude it, or drop --strict"
            )
        new = [entry.target for entry in self.entries if entry.action is Action.NEW and not entry.counter]
        if new:
            raise TransferError(
                f"strict transfer: {len(new)} target tensors have no source (e.g. {', '.join(new[:3])}); "
                "add --rename rules or drop --strict"
            )

    def apply(self, model: nn.Module) -> dict[str, Any]:
        """Write the planned tensors into ``model``; nothing is written if any check fails.

        The source tensors the plan carries are read here, once, and checked to be finite.

        :return: the plan as a dict, for provenance.
        :raises TransferError: when ``model`` is not the planned target.
        :raises NonFiniteError: when a carried source tensor holds NaN or infinity.
        """
        state = model.state_dict()
        for entry in self.entries:
            if entry.target not in state or tuple(state[entry.target].shape) != entry.shape:
                raise TransferError(
                    f"the model does not match the plan's target {self.target.name}: tensor '{entry.target}' "
                    f"{list(entry.shape)} is missing or has another shape; plan again against this model"
                )
        carried = [entry for entry in self.entries if entry.action in CARRIED]
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
        if entry.action is Action.REMAP_CLASSES:
            layout = self.target.class_rows[entry.target]
            return remap_rows(source, self.source.class_names or (), target, self.target.class_names or (), layout)
        if entry.adaptation is Adaptation.INPUT_CHANNELS:
            return adapt_input_channels(source, target.shape[1])
        if entry.adaptation is Adaptation.TRUNCATE_PAD:
            return truncate_or_pad(source, target)
        return source


# --- planning ---------------------------------------------------------------------------------------------


def key_groups(state_keys: Sequence[str], groups: LayerGroups) -> dict[str, tuple[str, Role]]:
    """Each state-dict key's (group, role); buffers join the group of their module's parameters."""
    owners: dict[str, tuple[str, Role]] = {}
    module_owner: dict[str, tuple[str, Role]] = {}
    for group in groups:
        for param in group.params:
            owners[param] = (group.name, group.role)
            module_owner.setdefault(param.rsplit(".", 1)[0] if "." in param else "", (group.name, group.role))
    for key in state_keys:
        if key in owners:
            continue
        module = key.rsplit(".", 1)[0] if "." in key else ""
        while module not in module_owner and module:
            module = module.rsplit(".", 1)[0] if "." in module else ""
        owners[key] = module_owner.get(module, ("(buffers)", Role.BACKBONE))
    return owners


def _suffix_score(target: str, source: str) -> int:
    """Components of the shorter key when it is a whole dotted suffix of the longer, else 0."""
    t, s = target.split("."), source.split(".")
    shorter = min(len(t), len(s))
    return shorter if t[-shorter:] == s[-shorter:] else 0


class _Matcher:
    """One planning pass: the source, the target and the rules, and what has been decided so far."""

    def __init__(self, source: TensorSource, target: PlanTarget, rules: TransferRules) -> None:
        self.source, self.target, self.rules = source, target, rules
        self.exclude = [re.compile(pattern) for pattern in rules.exclude]
        self.include = [re.compile(pattern) for pattern in rules.include]
        self.renames = [(re.compile(pattern), replacement) for pattern, replacement in rules.rename]
        self.shape_policy = rules.shape or ShapePolicy.SKIP
        self.class_aware = rules.class_aware is not False and bool(source.class_names) and bool(target.class_names)
        self.nesting = sorted({key.split(".", 1)[0] + "." for key in target.info if "." in key})
        self.unused: dict[str, UnusedSource] = {}
        self.used: set[str] = set()
        self.owners = key_groups(list(target.info), target.groups)

    # -- source keys under the rules ------------------------------------------------------------------

    def _renamed(self, key: str) -> str:
        for pattern, replacement in self.renames:
            key = pattern.sub(replacement, key)
        return key

    def _included(self, name: str) -> bool:
        return not self.include or any(p.search(name) for p in self.include)

    def _nested(self, name: str) -> str | None:
        """``backbone.<name>`` when the target holds it and the include rules take it: a bare
        backbone's keys are a tier's ``backbone.*`` (include rules are written for the target)."""
        found = [prefix + name for prefix in self.nesting if prefix + name in self.target.info]
        return found[0] if len(found) == 1 and self._included(found[0]) else None

    def candidates(self) -> dict[str, tuple[str, str]]:
        """Target key -> (source key, how it was renamed or ``""``), for every source key the rules let through."""
        found: dict[str, tuple[str, str]] = {}
        for key, info in self.source.info.items():
            mapped = self._renamed(key)
            how = "rename" if mapped != key else ""
            if not self._included(mapped) and (nested := self._nested(mapped)) is not None:
                mapped, how = nested, f"as {nested.split('.', 1)[0]}.*"
            names = {key, mapped}
            if any(p.search(n) for p in self.exclude for n in names) or not self._included(mapped):
                note = "excluded by rules" if mapped == key else f"excluded by rules as {mapped}"
                self.unused[key] = UnusedSource(key, Unused.EXCLUDED, info.shape, note)
                continue
            if mapped in found:
                raise TransferError(
                    f"rename rules map two source tensors onto '{mapped}': '{found[mapped][0]}' and '{key}'; make the rules more specific"
                )
            found[mapped] = (key, how)
        return found

    # -- one target tensor ----------------------------------------------------------------------------------

    def new(self, target: str, note: str = "") -> PlanEntry:
        info = self.target.info[target]
        group, role = self.owners[target]
        return PlanEntry(target, Action.NEW, info.shape, group, role, note=note, counter=is_counter(info.dtype))

    def decide(self, target: str, source_key: str, how: str, note: str = "") -> PlanEntry:
        info = self.target.info[target]
        group, role = self.owners[target]
        source_shape = self.source.info[source_key].shape
        base = {"shape": info.shape, "group": group, "role": role, "source": source_key, "source_shape": source_shape,
                "counter": is_counter(info.dtype)}
        if self.class_aware and target in self.target.class_rows:
            remapped = self._remap(target, source_key, base)
            if remapped is not None:
                return remapped
        if source_shape == info.shape:
            note = note or ("" if how in ("", "rename") else how)
            return PlanEntry(target, Action.RENAME if how or note else Action.COPY, note=note, **base)
        adaptation = self._adaptation(target, source_shape, info.shape)
        if adaptation is Adaptation.INPUT_CHANNELS:
            return PlanEntry(target, Action.ADAPT, note=f"input channels {source_shape[1]}->{info.shape[1]}", adaptation=adaptation, **base)
        if adaptation is Adaptation.TRUNCATE_PAD:
            note = f"truncate/pad {list(source_shape)}->{list(info.shape)}"
            return PlanEntry(target, Action.ADAPT, note=note, adaptation=adaptation, **base)
        self.unused[source_key] = UnusedSource(source_key, Unused.SHAPE, source_shape, f"target {target} is {list(info.shape)}")
        return self.new(target, note=f"source {source_key} has shape {list(source_shape)}")

    def _adaptation(self, target: str, source_shape: tuple[int, ...], shape: tuple[int, ...]) -> Adaptation | None:
        first_conv = (
            target == self.target.first_conv and len(shape) == 4 and len(source_shape) == 4
            and source_shape[0] == shape[0] and source_shape[2:] == shape[2:]
        )  # fmt: skip
        if first_conv and (self.shape_policy is ShapePolicy.ADAPT or self.rules.input_channels):
            return Adaptation.INPUT_CHANNELS
        if self.shape_policy is ShapePolicy.ADAPT and len(source_shape) == len(shape):
            return Adaptation.TRUNCATE_PAD
        return None

    def _remap(self, target: str, source_key: str, base: dict[str, Any]) -> PlanEntry | None:
        source_classes, target_classes = self.source.class_names or (), self.target.class_names or ()
        source_shape, shape = base["source_shape"], base["shape"]
        layout = self.target.class_rows[target]
        fits = (
            source_shape[:1] == (layout.rows(len(source_classes)),)
            and shape[:1] == (layout.rows(len(target_classes)),)
            and source_shape[1:] == shape[1:]
        )
        if not fits or list(source_classes) == list(target_classes):
            return None
        shared = len(set(source_classes) & set(target_classes))
        if shared == 0:  # rows of other classes would mislabel: nothing to carry
            self.unused[source_key] = UnusedSource(source_key, Unused.NO_TARGET, source_shape, "no class in common with the target")
            return self.new(target, note=f"no class in common with {source_key}")
        return PlanEntry(
            target, Action.REMAP_CLASSES, note=f"{shared} of {len(target_classes)} classes by name",
            covered=shared / len(target_classes), **base,
        )  # fmt: skip

    # -- the whole target ---------------------------------------------------------------------------------

    def entries(self) -> list[PlanEntry]:
        candidates = self.candidates()
        entries: dict[str, PlanEntry] = {}
        pending: list[str] = []
        for target in self.target.info:
            if any(p.search(target) for p in self.exclude):
                entries[target] = self.new(target, note="excluded by rules")
                continue
            match = candidates.get(target)
            if match is None:
                pending.append(target)
                entries[target] = self.new(target)
                continue
            entries[target] = self.decide(target, match[0], match[1])
            self.used.add(match[0])
        if self.rules.suffix_match is not False and pending:
            for target, source_key in self._suffix_matches(pending, candidates).items():
                entries[target] = self.decide(target, source_key, "rename", note="suffix match")
                self.used.add(source_key)
        return list(entries.values())

    def _suffix_matches(self, pending: Sequence[str], candidates: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        """Leftover targets matched to leftover sources that share the longest dotted suffix."""
        free = {mapped: key for mapped, (key, _) in candidates.items() if key not in self.used and key not in self.unused}
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
            if winners[0] in claimed:
                raise TransferError(
                    f"ambiguous suffix match: source '{free[winners[0]]}' fits both '{claimed[winners[0]]}' and '{target}'; add a --rename rule"
                )
            claimed[winners[0]] = target
        return {target: free[mapped] for mapped, target in claimed.items()}

    def unused_sources(self) -> list[UnusedSource]:
        for key, info in self.source.info.items():
            if key not in self.used and key not in self.unused:
                self.unused[key] = UnusedSource(key, Unused.NO_TARGET, info.shape, "the target has no such tensor")
        return [self.unused[key] for key in sorted(self.unused)]  # the same order whatever the file format


def plan(source: TensorSource, target: PlanTarget, rules: TransferRules) -> TransferPlan:
    """The plan for carrying ``source`` into ``target`` under ``rules``, from shapes alone."""
    matcher = _Matcher(source, target, rules)
    entries = matcher.entries()
    return TransferPlan(source=source, target=target, entries=entries, unused=matcher.unused_sources(), rules=rules)


def _coverage(entries: Sequence[PlanEntry], groups: LayerGroups) -> list[Coverage]:
    order = [group.name for group in groups]
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.counter:
            continue
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


__all__ = ["Action", "Adaptation", "Unused", "PlanEntry", "PlanTarget", "TransferPlan", "plan", "key_groups"]
