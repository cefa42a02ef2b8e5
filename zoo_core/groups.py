"""LayerGroups: one ordered, exhaustive partition of a model's parameters.

Groups run from input to output (stem → stages → neck → heads) and each has a role
(backbone, neck or head). Every parameter belongs to exactly one group: a parameter that
matches none, or two, is an error that names it. The same object drives freeze levels,
gradual unfreezing, discriminative learning rates and weight-decay exclusion.

Where groups come from: the ``zoo_layer_groups`` hook (timm's ``group_matcher``,
torchvision heuristics and ZooModel's neck and heads are built-in implementations; any plugin
can override them), falling back to one group per top-level child module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
from torch import nn

from .anatomy import find_classifier, unwrap
from .errors import GroupError, ZooError, did_you_mean
from .registry import Registry, default_registry
from .specs import FreezeLevel, Granularity, Role, SpecValueError


@attrs.frozen
class LayerGroup:
    """A named, ordered set of parameters with a role."""

    name: str
    role: Role
    params: tuple[str, ...]
    numel: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "params": len(self.params), "numel": self.numel}


class LayerGroups(Sequence[LayerGroup]):
    """Ordered layer groups of one model. Build with :func:`layer_groups` or :meth:`partition`."""

    def __init__(self, groups: Iterable[LayerGroup]) -> None:
        self._groups = tuple(groups)
        self._by_name = {group.name: group for group in self._groups}
        self._owner = {param: group for group in self._groups for param in group.params}

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def partition(
        cls, model: nn.Module, assignments: Iterable[tuple[str, Role | str, Iterable[str]]], *, what: str = ""
    ) -> LayerGroups:
        """Validate ``(name, role, parameter names)`` triples as an exhaustive partition of ``model``."""
        what = what or type(model).__name__
        params = dict(model.named_parameters())
        seen: dict[str, str] = {}
        groups = []
        for name, role, names in assignments:
            names = tuple(names)
            if not names:
                continue
            if name in {group.name for group in groups}:
                raise GroupError(f"{what}: two layer groups are named '{name}'")
            for param in names:
                if param not in params:
                    raise GroupError(f"{what}: group '{name}' names '{param}', which is not a parameter of the model")
                if param in seen:
                    raise GroupError(f"{what}: parameter '{param}' is in two layer groups, '{seen[param]}' and '{name}'")
                seen[param] = name
            numel = sum(params[param].numel() for param in names)
            try:
                role = Role(role)
            except ValueError:
                raise GroupError(f"{what}: group '{name}' has role {role!r}; roles: backbone, neck, head") from None
            groups.append(LayerGroup(name, role, names, numel))
        missing = [param for param in params if param not in seen]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise GroupError(
                f"{what}: parameter '{missing[0]}'{more} matches no layer group; the grouping for this architecture "
                "is incomplete: implement zoo_layer_groups for it in a plugin"
            )
        return cls(groups)

    # -- sequence protocol --------------------------------------------------------------------------

    def __getitem__(self, index: Any) -> Any:
        return self._groups[index]

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self._groups)

    # -- look-ups ----------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [group.name for group in self._groups]

    def group(self, name: str) -> LayerGroup:
        if name not in self._by_name:
            raise GroupError(f"no layer group '{name}'{did_you_mean(name, self._by_name)} (groups: {', '.join(self.names())})")
        return self._by_name[name]

    def owner(self, param: str) -> LayerGroup:
        """The group a parameter belongs to."""
        return self._owner[param]

    def select(self, selectors: Iterable[str], *, what: str = "groups") -> list[LayerGroup]:
        """Groups named by group name or role (``backbone``, ``neck``, ``head``/``heads``), in model order.

        :raises GroupError: for a selector that is neither, with suggestions.
        """
        chosen: set[str] = set()
        roles = {role.value for role in Role}
        for selector in selectors:
            role = "head" if selector == "heads" else selector
            if selector in self._by_name:
                chosen.add(selector)
            elif role in roles:
                chosen.update(group.name for group in self._groups if group.role.value == role)
            elif selector == "all":
                chosen.update(self._by_name)
            else:
                choices = [*self._by_name, *roles, "all"]
                raise GroupError(
                    f"{what}: unknown layer group '{selector}'{did_you_mean(selector, choices)} "
                    f"(groups: {', '.join(self.names())}; roles: backbone, neck, head)"
                )
        return [group for group in self._groups if group.name in chosen]

    def frozen_by_level(self, level: FreezeLevel | int) -> list[LayerGroup]:
        """Groups a freeze level freezes: 0 none, 1 the backbone, 2 everything but the heads."""
        try:
            roles = FreezeLevel.parse(level).frozen_roles
        except SpecValueError as exc:
            raise GroupError(f"freeze level {exc.message}") from None
        return [group for group in self._groups if group.role in roles]

    def head_distance(self) -> dict[str, int]:
        """How many non-head groups lie between each group and the heads (heads: 0).

        The last backbone/neck group is 1, the one before it 2, and so on: the exponent of a
        discriminative learning-rate decay.
        """
        distance = {}
        count = 0
        for group in reversed(self._groups):
            if group.role is Role.HEAD:
                distance[group.name] = 0
            else:
                count += 1
                distance[group.name] = count
        return distance

    def to_rows(self) -> list[dict[str, Any]]:
        return [group.to_dict() for group in self._groups]

    def __repr__(self) -> str:
        return f"LayerGroups({', '.join(f'{g.name}:{g.role.value}' for g in self._groups)})"


# --- building from module prefixes ---------------------------------------------------------------------


def groups_from_prefixes(
    model: nn.Module, layout: Sequence[tuple[str, Role | str, Sequence[str]]], *, what: str = ""
) -> LayerGroups:
    """Partition by module-name prefixes: ``[("stem", "backbone", ["conv1", "bn1"]), …]``."""
    params = [name for name, _ in model.named_parameters()]
    assignments = []
    for name, role, prefixes in layout:
        members = [p for p in params if any(p == prefix or p.startswith(prefix + ".") for prefix in prefixes)]
        assignments.append((name, role, members))
    return LayerGroups.partition(model, assignments, what=what)


def _is_block(module: nn.Module) -> bool:
    """A module made of parametrised submodules (a block), not a single layer."""
    return any(any(True for _ in child.parameters()) for child in module.children())


def refine(model: nn.Module, layout: Sequence[tuple[str, Role | str, Sequence[str]]]) -> list[tuple[str, Any, list[str]]]:
    """Fine granularity: split each backbone stage that is a sequence of blocks into one group per block.

    Heads stay whole, and a conv-norm-activation sequence is a layer, not a stage: neither splits.
    """
    refined: list[tuple[str, Any, list[str]]] = []
    for name, role, prefixes in layout:
        if len(prefixes) == 1 and Role(role) is not Role.HEAD:
            module = model.get_submodule(prefixes[0])
            children = [(child, sub) for child, sub in module.named_children() if any(True for _ in sub.parameters())]
            if len(children) > 1 and isinstance(module, (nn.Sequential, nn.ModuleList)) and all(_is_block(sub) for _, sub in children):
                refined.extend((f"{name}.{child}", role, [f"{prefixes[0]}.{child}"]) for child, _ in children)
                continue
        refined.append((name, role, list(prefixes)))
    return refined


def fallback_groups(model: nn.Module, hook: Any) -> LayerGroups:
    """One group per top-level child that holds parameters; the classifier's child is the head."""
    try:
        classifier_name = find_classifier(model, hook)[0]
    except ZooError:  # a headless model: everything is backbone
        classifier_name = ""
    head_child = classifier_name.split(".", 1)[0] if classifier_name else None
    direct = [name for name, _ in model.named_parameters(recurse=False)]
    layout: list[tuple[str, Role, list[str]]] = []
    for child, module in model.named_children():
        if not any(True for _ in module.parameters()):
            continue
        role = Role.HEAD if child == head_child else Role.BACKBONE
        layout.append((child, role, [child]))
    if direct:  # parameters held by the root itself (tokens, embeddings) sit with the stem
        stem_name = layout[0][0] if layout else "stem"
        if layout:
            layout[0] = (stem_name, layout[0][1], [*layout[0][2], *direct])
        else:
            layout.append(("stem", Role.BACKBONE, direct))
    return groups_from_prefixes(model, layout, what=type(model).__name__)


# --- the public entry point --------------------------------------------------------------------------------


def layer_groups(
    model: nn.Module,
    *,
    granularity: Granularity | str = Granularity.COARSE,
    registry: Registry | None = None,
    spec: Any = None,
) -> LayerGroups:
    """The ordered layer groups of ``model`` (see the module docstring for where they come from).

    :param registry: whose plugins answer; the process's default registry when ``None``
        (plugins always pass the one they were given).
    """
    try:
        granularity = Granularity(granularity)
    except ValueError:
        raise GroupError(f"granularity must be 'coarse' or 'fine', got {granularity!r}") from None
    registry = registry or default_registry()
    model = unwrap(model)
    hook = registry.plugins.hook
    result = hook.zoo_layer_groups(
        model=model,
        spec=spec if spec is not None else getattr(model, "zoo_spec", None),
        granularity=granularity,
        registry=registry,
    )
    if result is None:
        return fallback_groups(model, hook)
    return result if isinstance(result, LayerGroups) else LayerGroups.partition(model, result)
