"""Read, validate and layer ``registry.toml`` catalogs.

Layers, later wins: the built-in ``registry.toml`` < ``$ZOO_HOME/registry.toml`` <
``./zoo.toml`` < each ``--registry FILE``. Sections: ``[aliases]``, ``[families.NAME]`` with
``[families.NAME.tiers.TIER]``, ``[recipes.NAME]`` with ``[[recipes.NAME.stages]]``, and
``[chains.NAME]`` with ``[[chains.NAME.steps]]``.
Every entry remembers its origin; every error names the file and the key path, e.g.
``zoo.toml: recipes.fast.stages[1].lr: must be > 0, got -1``.

The ``*_from_mapping`` builders are also what plugins use when they register a mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomllib

from . import paths
from .errors import CatalogError, did_you_mean
from .specs import (
    AliasSpec,
    Chain,
    ChainStep,
    DriftGuard,
    EarlyStop,
    FamilySpec,
    HeadSpec,
    LrSpec,
    NeckSpec,
    Origin,
    Recipe,
    SpecValueError,
    Stage,
    TierSpec,
    TransferRules,
    WeightsPin,
    spec_keys,
)


@attrs.frozen
class Where:
    """A position in a catalog file, for error messages."""

    file: str
    path: str = ""

    def key(self, name: str) -> Where:
        return Where(self.file, f"{self.path}.{name}" if self.path else name)

    def index(self, position: int) -> Where:
        return Where(self.file, f"{self.path}[{position}]")

    def error(self, message: str) -> CatalogError:
        return CatalogError(f"{self.file}: {self.path}: {message}" if self.path else f"{self.file}: {message}")

    def origin(self) -> Origin:
        return Origin(self.file, self.path)


def _table(value: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise where.error(f"must be a table, got {type(value).__name__} {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: Iterable[str], where: Where) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise where.key(key).error(f"unknown key{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})")


def _build(where: Where, factory: Any, **kwargs: Any) -> Any:
    """Construct a spec, turning validator failures into key-path errors."""
    try:
        return factory(**kwargs)
    except SpecValueError as exc:
        raise where.key(exc.attribute).error(exc.message) from None
    except TypeError as exc:  # a value of the wrong kind reached a converter
        raise where.error(str(exc)) from None


# --- weights, aliases ----------------------------------------------------------------------------


def weights_from_mapping(value: Any, where: Where) -> WeightsPin:
    data = _table(value, where)
    _check_keys(data, ("url", "sha256", "filename"), where)
    if "url" not in data and "sha256" not in data:
        raise where.error("give at least 'url' or 'sha256'")
    return _build(where, WeightsPin, url=data.get("url"), sha256=data.get("sha256"), filename=data.get("filename"))


def _class_names(value: Any, where: Where) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise where.error("must be a list of strings")
    return tuple(value)


def alias_from_mapping(name: str, value: Any, where: Where) -> AliasSpec:
    """``name = "target"`` or ``name = { target = "...", weights = { url, sha256 } }``."""
    if isinstance(value, str):
        return AliasSpec(name=name, target=value, origin=where.origin())
    data = _table(value, where)
    _check_keys(data, ("target", "weights", "num_classes", "class_names", "description"), where)
    if not isinstance(data.get("target"), str):
        raise where.key("target").error("is required: the name this alias stands for")
    weights = weights_from_mapping(data["weights"], where.key("weights")) if "weights" in data else None
    return _build(
        where,
        AliasSpec,
        name=name,
        target=data["target"],
        weights=weights,
        num_classes=data.get("num_classes"),
        class_names=_class_names(data.get("class_names"), where.key("class_names")),
        description=data.get("description", ""),
        origin=where.origin(),
    )


# --- transfer rules, families ------------------------------------------------------------------


def rules_from_mapping(value: Any, where: Where) -> TransferRules:
    data = _table(value, where)
    _check_keys(
        data, spec_keys(TransferRules), where
    )
    for flag in ("suffix_match", "class_aware", "input_channels"):
        if flag in data and not isinstance(data[flag], bool):
            raise where.key(flag).error(f"must be true or false, got {data[flag]!r}")
    strip = data.get("strip_prefixes")
    return _build(
        where,
        TransferRules,
        include=data.get("include", ()),
        exclude=data.get("exclude", ()),
        rename=data.get("rename", ()),
        shape=data.get("shape"),
        suffix_match=data.get("suffix_match"),
        class_aware=data.get("class_aware"),
        strip_prefixes=tuple(strip) if strip is not None else None,
        input_channels=data.get("input_channels"),
    )


def _head_from_value(value: Any, where: Where) -> HeadSpec:
    if isinstance(value, str):
        return HeadSpec(kind=value)
    data = dict(_table(value, where))
    kind = data.pop("kind", "linear")
    out = data.pop("out", None)
    return _build(where, HeadSpec, kind=kind, out=out, options=data)


def _neck_from_value(value: Any, where: Where) -> NeckSpec:
    if isinstance(value, str):
        return NeckSpec(kind=value)
    data = dict(_table(value, where))
    if "kind" not in data:
        raise where.key("kind").error("is required: the registered neck factory to use")
    return _build(where, NeckSpec, kind=data.pop("kind"), options=data)


def tier_from_mapping(family: str, tier: str, value: Any, where: Where) -> TierSpec:
    data = _table(value, where)
    allowed = ("rank", "backbone", "neck", "heads", "params", "weights", "num_classes", "class_names", "description")
    _check_keys(data, allowed, where)
    for required in ("rank", "backbone"):
        if required not in data:
            raise where.key(required).error("is required")
    heads_data = _table(data.get("heads", {"classifier": "linear"}), where.key("heads"))
    heads = {head: _head_from_value(spec, where.key("heads").key(head)) for head, spec in heads_data.items()}
    return _build(
        where,
        TierSpec,
        family=family,
        tier=tier,
        rank=data["rank"],
        backbone=data["backbone"],
        heads=heads,
        neck=_neck_from_value(data["neck"], where.key("neck")) if "neck" in data else None,
        params=_table(data.get("params", {}), where.key("params")),
        weights=weights_from_mapping(data["weights"], where.key("weights")) if "weights" in data else None,
        num_classes=data.get("num_classes"),
        class_names=_class_names(data.get("class_names"), where.key("class_names")),
        description=data.get("description", ""),
        origin=where.origin(),
    )


def family_from_mapping(name: str, value: Any, where: Where) -> FamilySpec:
    data = _table(value, where)
    _check_keys(data, ("description", "builder", "rules", "tiers"), where)
    tiers_data = _table(data.get("tiers", {}), where.key("tiers"))
    tiers = {tier: tier_from_mapping(name, tier, spec, where.key("tiers").key(tier)) for tier, spec in tiers_data.items()}
    rules = rules_from_mapping(data["rules"], where.key("rules")) if "rules" in data else TransferRules()
    kwargs: dict[str, Any] = {"builder": data["builder"]} if "builder" in data else {}
    return _build(
        where,
        FamilySpec,
        name=name,
        tiers=tiers,
        rules=rules,
        description=data.get("description", ""),
        origin=where.origin(),
        **kwargs,
    )


# --- recipes -----------------------------------------------------------------------------------

STAGE_KEYS = spec_keys(Stage)
RECIPE_KEYS = tuple(key for key in spec_keys(Recipe) if key != "name")  # the table's own key names it


def lr_from_value(value: Any, where: Where) -> LrSpec:
    """``1e-4``, ``{ head = 1e-3, backbone = 1e-5 }``, or ``{ base = 1e-3, decay = 2.6 }``."""
    if isinstance(value, bool):
        raise where.error(f"must be a number or a table, got {value!r}")
    if isinstance(value, (int, float)):
        return _lr_build(where, value=value)
    data = dict(_table(value, where))
    if "base" in data:
        _check_keys(data, ("base", "decay", "layer_decay"), where)
        decay = data.get("decay")
        if "layer_decay" in data:
            layer_decay = data["layer_decay"]
            if not isinstance(layer_decay, (int, float)) or not 0 < layer_decay <= 1:
                raise where.key("layer_decay").error(f"must be in (0, 1], got {layer_decay!r}")
            decay = 1.0 / layer_decay
        return _lr_build(where, base=data["base"], decay=decay)
    return _lr_build(where, per_group=data)


def _lr_build(where: Where, **kwargs: Any) -> LrSpec:
    """Build an LrSpec; errors point at ``lr`` itself or at ``lr.<key>``."""
    try:
        return LrSpec(**kwargs)
    except SpecValueError as exc:
        # "value" is the bare number form, "lr" the whole table; both are reported at ``lr``
        key = exc.attribute.removeprefix("lr").lstrip(".")
        raise (where if key in ("", "value") else where.key(key)).error(exc.message) from None


def _sub_spec(value: Any, spec: Any, allowed: Sequence[str], where: Where) -> Any:
    table = _table(value, where)
    _check_keys(table, allowed, where)
    return _build(where, spec, **table)


def stage_from_mapping(value: Any, where: Where) -> Stage:
    data = dict(_table(value, where))
    _check_keys(data, STAGE_KEYS, where)
    for required in ("epochs", "lr"):
        if required not in data:
            raise where.key(required).error("is required")
    data["lr"] = lr_from_value(data["lr"], where.key("lr"))
    if "train" in data:
        train = data["train"]
        if isinstance(train, str):
            train = [train]
        if not isinstance(train, list) or not all(isinstance(item, str) for item in train):
            raise where.key("train").error("must be a list of group names or roles (backbone, neck, head)")
        data["train"] = tuple(train)
    for key, spec, allowed in (
        ("early_stop", EarlyStop, ("monitor", "mode", "patience", "min_delta")),
        ("drift_guard", DriftGuard, ("band", "action", "watch", "components")),
    ):
        if key in data:  # `true` for the defaults, or a table of settings
            data[key] = spec() if data[key] is True else _sub_spec(data[key], spec, allowed, where.key(key))
    if "ema" in data and isinstance(data["ema"], Mapping):
        ema = data["ema"]
        _check_keys(ema, ("decay",), where.key("ema"))
        data["ema"] = ema.get("decay")
    for table_key in ("augment", "loss_scales"):
        if table_key in data:
            _table(data[table_key], where.key(table_key))
    return _build(where, Stage, **data)


def recipe_from_mapping(name: str, value: Any, where: Where) -> Recipe:
    data = dict(_table(value, where))
    _check_keys(data, RECIPE_KEYS, where)
    stages_data = data.pop("stages", None)
    if not isinstance(stages_data, list) or not stages_data:
        raise where.key("stages").error("is required: a list of [[stages]] tables")
    stages = [stage_from_mapping(stage, where.key("stages").index(i)) for i, stage in enumerate(stages_data)]
    return _build(where, Recipe, name=name, stages=stages, origin=where.origin(), **data)


# --- chains ------------------------------------------------------------------------------------

STEP_KEYS = spec_keys(ChainStep)
CHAIN_KEYS = tuple(key for key in spec_keys(Chain) if key != "name")


def _toml_literal(value: Any) -> str:
    """A value as TOML source text, so a step's ``set`` table becomes ``--set KEY=VALUE`` overrides."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key} = {_toml_literal(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a recipe value")


def _overrides(value: Any, where: Where) -> tuple[str, ...]:
    """``set = ["stages.*.epochs=1"]`` or ``set = { "stages.*.epochs" = 1 }``."""
    if isinstance(value, list) and all(isinstance(item, str) and "=" in item for item in value):
        return tuple(value)
    if isinstance(value, Mapping):
        try:
            return tuple(f"{key}={_toml_literal(item)}" for key, item in value.items())
        except TypeError as exc:
            raise where.error(str(exc)) from None
    raise where.error('must be a table of recipe values ({ "stages.*.epochs" = 1 }) or a list of "KEY=VALUE" strings')


def step_from_mapping(value: Any, where: Where) -> ChainStep:
    data = dict(_table(value, where))
    _check_keys(data, STEP_KEYS, where)
    for required in ("name", "data"):
        if not isinstance(data.get(required), str):
            raise where.key(required).error("is required: " + ("the step's name" if required == "name" else "its data folder or file"))
    if "set" in data:
        data["set"] = _overrides(data["set"], where.key("set"))
    if "classes" in data:
        data["classes"] = _class_names(data["classes"], where.key("classes"))
    if "compare_scratch" in data and not isinstance(data["compare_scratch"], bool):
        raise where.key("compare_scratch").error(f"must be true or false, got {data['compare_scratch']!r}")
    return _build(where, ChainStep, **data)


def chain_from_mapping(name: str, value: Any, where: Where) -> Chain:
    data = dict(_table(value, where))
    _check_keys(data, CHAIN_KEYS, where)
    if not isinstance(data.get("model"), str):
        raise where.key("model").error("is required: the registry name or checkpoint the first step starts from")
    steps_data = data.pop("steps", None)
    if not isinstance(steps_data, list) or not steps_data:
        raise where.key("steps").error("is required: a list of [[steps]] tables")
    steps = [step_from_mapping(step, where.key("steps").index(i)) for i, step in enumerate(steps_data)]
    if "pretrained" in data and not isinstance(data["pretrained"], bool):
        raise where.key("pretrained").error(f"must be true or false, got {data['pretrained']!r}")
    return _build(where, Chain, name=name, steps=steps, origin=where.origin(), **data)


# --- files and layers ----------------------------------------------------------------------------


@attrs.frozen
class CatalogLayer:
    """One parsed catalog file."""

    label: str
    aliases: Mapping[str, AliasSpec]
    families: Mapping[str, FamilySpec]
    recipes: Mapping[str, Recipe]
    chains: Mapping[str, Chain] = attrs.field(factory=dict)


def parse_catalog(data: Mapping[str, Any], label: str) -> CatalogLayer:
    """Validate one catalog's parsed TOML."""
    root = Where(label)
    _check_keys(data, ("aliases", "families", "recipes", "chains"), root)
    aliases_data = _table(data.get("aliases", {}), root.key("aliases"))
    families_data = _table(data.get("families", {}), root.key("families"))
    recipes_data = _table(data.get("recipes", {}), root.key("recipes"))
    chains_data = _table(data.get("chains", {}), root.key("chains"))
    return CatalogLayer(
        label=label,
        aliases={n: alias_from_mapping(n, v, root.key("aliases").key(n)) for n, v in aliases_data.items()},
        families={n: family_from_mapping(n, v, root.key("families").key(n)) for n, v in families_data.items()},
        recipes={n: recipe_from_mapping(n, v, root.key("recipes").key(n)) for n, v in recipes_data.items()},
        chains={n: chain_from_mapping(n, v, root.key("chains").key(n)) for n, v in chains_data.items()},
    )


def read_catalog(path: Path, label: str | None = None) -> CatalogLayer:
    """Read and validate one catalog file."""
    label = label or paths.display(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise CatalogError(f"{label}: no such catalog file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{label}: not valid TOML: {exc}") from None
    return parse_catalog(data, label)


@attrs.frozen
class Catalog:
    """All layers merged; later layers replace earlier entries with the same name."""

    layers: tuple[CatalogLayer, ...]
    aliases: Mapping[str, AliasSpec]
    families: Mapping[str, FamilySpec]
    recipes: Mapping[str, Recipe]
    chains: Mapping[str, Chain] = attrs.field(factory=dict)


def catalog_files(extra: Sequence[Path | str] = ()) -> list[tuple[Path, str]]:
    """The catalog files that exist, lowest precedence first, with their display labels."""
    found: list[tuple[Path, str]] = [(paths.builtin_catalog(), "registry.toml (built-in)")]
    for optional in (paths.user_catalog(), paths.project_catalog()):
        if optional.is_file():
            found.append((optional, paths.display(optional)))
    found.extend((Path(item), paths.display(item)) for item in extra)
    return found


def load_catalog(extra: Sequence[Path | str] = ()) -> Catalog:
    """Read every layer and merge them."""
    layers = tuple(read_catalog(path, label) for path, label in catalog_files(extra))
    return merge_layers(layers)


def merge_layers(layers: Sequence[CatalogLayer]) -> Catalog:
    aliases: dict[str, AliasSpec] = {}
    families: dict[str, FamilySpec] = {}
    recipes: dict[str, Recipe] = {}
    chains: dict[str, Chain] = {}
    for layer in layers:
        aliases.update(layer.aliases)
        families.update(layer.families)
        recipes.update(layer.recipes)
        chains.update(layer.chains)
    return Catalog(tuple(layers), aliases, families, recipes, chains)
