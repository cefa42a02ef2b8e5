"""The Registry: every name Zoo knows, built explicitly from catalogs and plugins.

Bare names (no ``source:`` prefix) are looked up in this order, first match wins:

1. catalog aliases (``[aliases]``), exactly as typed;
2. tiers, written ``family/tier``;
3. an existing file with a weights suffix (``.pt``, ``.pth``, ``.safetensors`` …);
4. sources that accept bare names, by ascending ``priority`` (timm 10, torchvision 20), each
   checking its name index.

An unknown name is an error that suggests close matches, says how many names are
registered and which command lists them.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .catalog import Catalog, Where, chain_from_mapping, family_from_mapping, load_catalog, recipe_from_mapping
from .datasets import READER_ATTRIBUTES, DatasetReader, by_priority
from .errors import CatalogError, PluginError, UnknownNameError, did_you_mean
from .names import COMPOSE, is_tier_name, looks_like_path, parse_name, split_source
from .plugins import PluginHost, Registration, load_plugins
from .sources import Source, SourceIndex, load_index
from .specs import Chain, FamilySpec, LocationKind, Recipe, ResolvedModel, TierSpec, WeightsFile, WeightsPin

log = logging.getLogger(__name__)

MAX_ALIAS_DEPTH = 16


def load_object(spec: str | Any) -> Any:
    """Resolve an import string ``"package.module:attribute"``; other values pass through."""
    if not isinstance(spec, str):
        return spec
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot import {spec!r}: {exc}") from None
    return target


@attrs.frozen
class Factory:
    """A registered head or neck factory; ``target`` may be an import string until first use."""

    name: str
    target: Any
    description: str = ""
    plugin: str = ""

    def load(self) -> Callable[..., Any]:
        return load_object(self.target)


@attrs.frozen
class ListedModel:
    """One row of ``zoo list``."""

    name: str  # canonical, e.g. "timm:resnet10t", "maxsight/t5", "fast"
    kind: str  # "model", "alias" or "tier"
    source: str
    tags: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "tags": list(self.tags),
            "pretrained": bool(self.tags),
            "description": self.description,
        }


def _accept_named(value: Any) -> tuple[str, Any]:
    name = getattr(value, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{value!r} has no 'name'")
    return name, value


def _accept_factory(name: str, factory: Any, description: str = "") -> tuple[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError("the first argument must be the factory's name")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ValueError(f"factory for {name!r} must be callable or 'module:attribute', got {factory!r}")
    return name, Factory(name, factory, description)


def _accept_spec(
    spec_type: type, from_mapping: Callable[[str, Any, Where], Any], kind: str, section: str
) -> Callable[[Any], tuple[str, Any]]:
    """A ``register`` validator for specs that plugins may also give as catalog-style mappings."""

    def accept(value: Any) -> tuple[str, Any]:
        if isinstance(value, Mapping):
            data = dict(value)
            name = data.pop("name", None)
            if not isinstance(name, str):
                raise ValueError(f"a {kind} mapping needs a 'name'")
            value = from_mapping(name, data, Where("plugin", f"{section}.{name}"))
        if not isinstance(value, spec_type):
            raise ValueError(f"expected a {spec_type.__name__} or mapping, got {type(value).__name__}")
        return value.name, value

    return accept


_accept_family = _accept_spec(FamilySpec, family_from_mapping, "family", "families")
_accept_recipe = _accept_spec(Recipe, recipe_from_mapping, "recipe", "recipes")
_accept_chain = _accept_spec(Chain, chain_from_mapping, "chain", "chains")


class Registry:
    """Names to specs: catalogs layered over plugin registrations. Build one with :meth:`load`."""

    def __init__(self, plugins: PluginHost, catalog: Catalog) -> None:
        self.plugins = plugins
        self.catalog = catalog
        self._indexes: dict[str, SourceIndex | None] = {}
        self._validate_sources()

    @classmethod
    def load(cls, registry_files: Sequence[Path | str] = (), plugins: PluginHost | None = None) -> Registry:
        """Load installed plugins (unless given) and every catalog layer."""
        return cls(plugins or load_plugins(), load_catalog(registry_files))

    # -- what plugins and catalogs provide ---------------------------------------------------------

    @functools.cached_property
    def _sources(self) -> dict[str, Registration]:
        found = self.plugins.collect("zoo_register_sources", "source", _accept_named)
        for registration in found.values():
            if not isinstance(registration.value, Source):
                raise PluginError(
                    f"plugin '{registration.plugin}' registered source '{registration.name}' "
                    "that lacks the Source methods (index_version, build_index, resolve, create)"
                )
        return found

    @functools.cached_property
    def families(self) -> dict[str, FamilySpec]:
        found = {name: reg.value for name, reg in self.plugins.collect("zoo_register_tiers", "tier family", _accept_family).items()}
        found.update(self.catalog.families)
        return found

    @functools.cached_property
    def recipes(self) -> dict[str, Recipe]:
        found = {name: reg.value for name, reg in self.plugins.collect("zoo_register_recipes", "recipe", _accept_recipe).items()}
        found.update(self.catalog.recipes)
        return found

    @functools.cached_property
    def chains(self) -> dict[str, Chain]:
        found = {name: reg.value for name, reg in self.plugins.collect("zoo_register_chains", "chain", _accept_chain).items()}
        found.update(self.catalog.chains)
        return found

    @functools.cached_property
    def heads(self) -> dict[str, Factory]:
        return self._factories("zoo_register_heads", "head")

    @functools.cached_property
    def necks(self) -> dict[str, Factory]:
        return self._factories("zoo_register_necks", "neck")

    @functools.cached_property
    def tasks(self) -> dict[str, Registration]:
        return self.plugins.collect("zoo_register_tasks", "task", _accept_named)

    @functools.cached_property
    def dataset_readers(self) -> dict[str, Registration]:
        found = self.plugins.collect("zoo_register_datasets", "dataset reader", _accept_named)
        for registration in found.values():
            if not isinstance(registration.value, DatasetReader):
                missing = [name for name in READER_ATTRIBUTES if not hasattr(registration.value, name)]
                raise PluginError(
                    f"plugin '{registration.plugin}' registered dataset reader '{registration.name}' "
                    f"that lacks {', '.join(missing)}; a DatasetReader has {', '.join(READER_ATTRIBUTES)}"
                )
        return found

    def readers_for(self, task: str) -> list[DatasetReader]:
        """The dataset readers of ``task``, in the order auto-detection tries them (``priority``, then name)."""
        return by_priority([reg.value for reg in self.dataset_readers.values() if reg.value.task == task])

    def _factories(self, hook: str, kind: str) -> dict[str, Factory]:
        found = self.plugins.collect(hook, kind, _accept_factory)
        return {name: attrs.evolve(reg.value, plugin=reg.plugin) for name, reg in found.items()}

    def source_names(self) -> list[str]:
        return sorted(self._sources)

    def source(self, name: str) -> Source:
        listing = f"sources: {', '.join(self.source_names()) or 'none'}; run `zoo plugins` to see plugins"
        return _lookup(self._sources, name, "source", listing + self._failed("zoo_register_sources")).value

    def source_plugin(self, name: str) -> str:
        return self._sources[name].plugin

    def index(self, source_name: str) -> SourceIndex | None:
        """The source's name index (built once per library version); None if not listable."""
        if source_name not in self._indexes:
            self._indexes[source_name] = load_index(self.source(source_name))
        return self._indexes[source_name]

    def tier(self, name: str) -> TierSpec:
        family_name, _, tier_name = name.partition("/")
        family = self.family(family_name)
        if tier_name not in family.tiers:
            raise UnknownNameError(
                f"family '{family_name}' has no tier '{tier_name}'{did_you_mean(tier_name, family.tiers)} "
                f"(tiers: {', '.join(t.tier for t in family.ordered())}; run `zoo tiers {family_name}`)"
            )
        return family.tiers[tier_name]

    def family(self, name: str) -> FamilySpec:
        listing = f"{len(self.families)} registered; run `zoo tiers` to list them" + self._failed("zoo_register_tiers")
        return _lookup(self.families, name, "tier family", listing)

    def recipe(self, name: str) -> Recipe:
        listing = f"{len(self.recipes)} registered; run `zoo recipes` to list them" + self._failed("zoo_register_recipes")
        return _lookup(self.recipes, name, "recipe", listing)

    def chain(self, name: str) -> Chain:
        listing = f"{len(self.chains)} registered; run `zoo chains` to list them" + self._failed("zoo_register_chains")
        return _lookup(self.chains, name, "chain", listing)

    def task(self, name: str) -> Any:
        listing = f"tasks: {', '.join(sorted(self.tasks)) or 'none'}; run `zoo plugins` to see plugins"
        return _lookup(self.tasks, name, "task", listing + self._failed("zoo_register_tasks")).value

    def factory(self, kind: str, name: str) -> Factory:
        table = self.heads if kind == "head" else self.necks
        listing = f"{kind}s: {', '.join(sorted(table))}" + self._failed(f"zoo_register_{kind}s")
        return _lookup(table, name, kind, listing)

    def _failed(self, *hooks: str) -> str:
        return self.plugins.failure_note(*hooks)

    def collect_all(self) -> None:
        """Call every registration hook now, so that ``zoo plugins`` can report the ones that fail."""
        for table in ("_sources", "families", "recipes", "chains", "heads", "necks", "tasks", "dataset_readers"):
            getattr(self, table)

    # -- resolution ------------------------------------------------------------------------------

    def resolve(self, text: str) -> ResolvedModel:
        """Resolve any model name to a :class:`ResolvedModel`."""
        return self._resolve(text.strip(), depth=0)

    def _resolve(self, text: str, depth: int) -> ResolvedModel:
        if depth > MAX_ALIAS_DEPTH:
            raise CatalogError(f"alias '{text}' is part of a cycle of aliases; fix the [aliases] section")
        if COMPOSE in text and not (looks_like_path(text) and Path(text).is_file()):
            return self._resolve_composed(text, depth)
        source_name, body = split_source(text)
        if source_name is not None:
            return self._resolve_in_source(self.source(source_name), text)
        alias = self.catalog.aliases.get(text)
        if alias is not None:
            target = self._resolve(alias.target, depth + 1)
            return attrs.evolve(
                target,
                name=text if alias.weights else target.name,  # own weights: pinned under the alias
                requested=text,
                via=f"alias '{text}' ({alias.origin})",
                weights=_pinned_file(alias.weights) if alias.weights else target.weights,
                num_classes=alias.num_classes or target.num_classes,
                class_names=alias.class_names or target.class_names,
            )
        if is_tier_name(text):
            family_name = text.split("/", 1)[0]
            if family_name in self.families:
                return self._resolve_tier(self.tier(text), text)
        if looks_like_path(text) and Path(text).is_file() and "file" in self._sources:
            return self._resolve_in_source(self.source("file"), f"file:{text}")
        for source in self._bare_name_sources():
            ref = parse_name(text, tagged=source.tagged, revisioned=source.revisioned)
            index = self.index(source.name)
            if index is not None and ref.name in index:
                return self._resolve_in_source(source, f"{source.name}:{text}", requested=text)
        raise self._unknown(text)

    def _resolve_in_source(self, source: Source, text: str, requested: str | None = None) -> ResolvedModel:
        _, body = split_source(text)
        ref = parse_name(body, tagged=source.tagged, revisioned=source.revisioned)
        ref = attrs.evolve(ref, source=source.name)
        resolved = source.resolve(ref, self)
        return attrs.evolve(resolved, requested=requested or text, via=resolved.via or f"source {source.name}")

    def _resolve_tier(self, tier: TierSpec, text: str) -> ResolvedModel:
        family = self.family(tier.family)
        return ResolvedModel(
            name=tier.name,
            source="tier",
            architecture=family.builder,
            weights=_pinned_file(tier.weights) if tier.weights else None,
            num_classes=tier.num_classes,
            class_names=tier.class_names,
            requested=text,
            via=f"tier of family '{family.name}' ({tier.origin})",
            tier=tier,
        )

    def _resolve_composed(self, text: str, depth: int) -> ResolvedModel:
        """``BACKBONE+TIER``: the tier's neck and heads over another backbone (``timm:resnet18+detector/fcos``)."""
        base_text, _, tier_text = text.rpartition(COMPOSE)
        if not base_text or not tier_text:
            raise CatalogError(f"'{text}': a composed name is BACKBONE+TIER, e.g. timm:resnet18+detector/fcos")
        over = self._resolve(tier_text, depth + 1)
        if over.tier is None:
            raise CatalogError(
                f"'{text}': '{tier_text}' is not a tier; BACKBONE+TIER puts a tier's neck and heads over "
                "BACKBONE (list tiers with `zoo tiers`)"
            )
        base = self._resolve(base_text, depth + 1)
        from_file = base.source == "file"
        tier = attrs.evolve(over.tier, backbone=base.requested if from_file else base.name, weights=None)
        # over a file (a backbone export), the name is the architecture's: checkpoints trained from it
        # rebuild without the file, and their provenance names the file as where the weights began
        architecture = base.architecture if from_file and base.architecture else base.name
        return attrs.evolve(
            over,
            name=f"{architecture}{COMPOSE}{over.tier.name}",
            weights=None,  # the backbone's pretrained weights, not the tier's own
            requested=text,
            via=f"{over.tier.name}'s neck and heads over {base.name}",
            tier=tier,
        )

    def _bare_name_sources(self) -> list[Source]:
        sources = [reg.value for reg in self._sources.values() if reg.value.priority is not None]
        return sorted(sources, key=lambda source: (source.priority, source.name))

    def _unknown(self, text: str) -> UnknownNameError:
        names = self.all_names()
        ref_name = text.split("@", 1)[0]
        hint = did_you_mean(ref_name.split(".", 1)[0], names) or did_you_mean(ref_name, names)
        return UnknownNameError(
            f"unknown model '{text}'{hint} ({len(names)} names are registered; run `zoo list` to see them, "
            f"or `zoo list 'PATTERN*'` to search{self._failed('zoo_register_sources', 'zoo_register_tiers')})"
        )

    def all_names(self) -> list[str]:
        names = list(self.catalog.aliases)
        names += [tier.name for family in self.families.values() for tier in family.tiers.values()]
        for source in self._bare_name_sources():
            index = self.index(source.name)
            if index is not None:
                names += index.names()
        return names

    # -- listing ------------------------------------------------------------------------------------

    def list_models(
        self, pattern: str | None = None, source: str | None = None, pretrained: bool = False
    ) -> list[ListedModel]:
        """Aliases, tiers and indexed source names matching a shell-style ``pattern``."""
        rows: list[ListedModel] = []
        if source is not None and source not in ("alias", "tier"):
            self.source(source)  # unknown sources are an error, not an empty list
        if source in (None, "alias"):
            for alias in self.catalog.aliases.values():
                if _matches(pattern, alias.name, alias.target) and (not pretrained or alias.weights):
                    rows.append(ListedModel(alias.name, "alias", "alias", description=f"-> {alias.target}"))
        if source in (None, "tier"):
            for family in self.families.values():
                for tier in family.ordered():
                    if _matches(pattern, tier.name) and (not pretrained or tier.weights):
                        rows.append(ListedModel(tier.name, "tier", "tier", description=tier.description or family.description))
        for name in self.source_names():
            if source not in (None, name):
                continue
            index = self.index(name)
            if index is None:
                continue
            for entry in index.match(pattern):
                if pretrained and not entry.tags:
                    continue
                rows.append(ListedModel(f"{name}:{entry.name}", "model", name, entry.tags))
        return rows

    # -- validation ----------------------------------------------------------------------------------

    def _validate_sources(self) -> None:
        """Catalog names that use a source prefix must name a registered source."""
        references = [(str(alias.origin), alias.target) for alias in self.catalog.aliases.values()]
        for family in self.catalog.families.values():
            references += [(f"{tier.origin}.backbone", tier.backbone) for tier in family.tiers.values()]
        for where, name in references:
            source_name, _ = split_source(name)
            if source_name is not None and source_name not in self._sources:
                raise CatalogError(
                    f"{where}: unknown source '{source_name}'{did_you_mean(source_name, self._sources)} "
                    f"(sources: {', '.join(self.source_names())})"
                )


def _lookup(table: Mapping[str, Any], name: str, what: str, listing: str) -> Any:
    """``table[name]``, or an error that suggests a close name and says how to list them all."""
    if name not in table:
        raise UnknownNameError(f"unknown {what} '{name}'{did_you_mean(name, table)} ({listing})")
    return table[name]


def _matches(pattern: str | None, *names: str) -> bool:
    if not pattern:
        return True
    return any(fnmatch.fnmatchcase(name.lower(), pattern.lower()) for name in names)


def _pinned_file(pin: WeightsPin) -> WeightsFile:
    return WeightsFile(kind=LocationKind.URL, filename=pin.file_name, url=pin.url, sha256=pin.sha256)


# --- the default registry --------------------------------------------------------------------------

_default: dict[tuple[str, ...], Registry] = {}


def default_registry() -> Registry:
    """The registry for this process's environment and working folder, built on first use."""
    key = (
        os.getcwd(),
        os.environ.get("ZOO_HOME", ""),
        os.environ.get("ZOO_DISABLE_PLUGINS", ""),
        os.environ.get("ZOO_REGISTRY", ""),
    )
    if key not in _default:
        extra = [part for part in os.environ.get("ZOO_REGISTRY", "").split(os.pathsep) if part]
        _default[key] = Registry.load(extra)
    return _default[key]


def reset_default_registry() -> None:
    """Forget cached registries, e.g. after installing a plugin in the running process."""
    _default.clear()

