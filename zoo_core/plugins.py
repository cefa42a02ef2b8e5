"""The plugin manager: built-in and third-party plugins through one entry-point door.

Every plugin, Zoo's own included, is declared in the ``zoo`` entry-point group and loaded
here; nothing registers itself at import time. ``ZOO_DISABLE_PLUGINS=a,b`` blocks plugins by
entry-point name. A plugin that fails to import is recorded with its error and skipped, so
the rest keeps working. A hook implementation with a misspelled name is an error (pluggy's
``check_pending``), not silence.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError, ZooError, did_you_mean

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "zoo"
DISABLE_ENV = "ZOO_DISABLE_PLUGINS"


class PluginStatus(enum.Enum):
    LOADED = "loaded"
    BLOCKED = "blocked"
    FAILED = "failed"


@attrs.frozen
class PluginRecord:
    """What happened to one plugin while loading."""

    name: str
    module: str
    status: PluginStatus
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    hooks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "status": self.status.value,
            "distribution": self.distribution,
            "version": self.version,
            "error": self.error,
            "hooks": list(self.hooks),
        }


@attrs.frozen
class HookFailure:
    """A plugin's hook that raised; the plugin's other hooks keep working."""

    plugin: str
    hook: str
    error: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' failed in {self.hook}: {self.error}"


@attrs.frozen
class Registration:
    """One object a plugin registered through a ``register`` callback."""

    kind: str
    name: str
    value: Any
    plugin: str


def disabled_from_env() -> frozenset[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows every ``zoo_*`` hookspec and holds no plugins."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


class PluginHost:
    """A pluggy manager plus the record of what was loaded, blocked or failed."""

    def __init__(self, manager: pluggy.PluginManager | None = None) -> None:
        self.manager = manager or new_plugin_manager()
        self.records: list[PluginRecord] = []
        self.failures: list[HookFailure] = []

    @property
    def hook(self) -> Any:
        return self.manager.hook

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, disabled: Iterable[str] | None = None) -> None:
        """Import and register every plugin in the ``zoo`` entry-point group."""
        blocked = disabled_from_env() if disabled is None else frozenset(disabled)
        seen: set[str] = set()
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            if entry_point.name in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(entry_point.name)
            dist = getattr(entry_point, "dist", None)
            details = {
                "distribution": dist.name if dist else None,
                "version": dist.version if dist else None,
            }
            if entry_point.name in blocked:
                self.manager.set_blocked(entry_point.name)
                self.records.append(
                    PluginRecord(entry_point.name, entry_point.value, PluginStatus.BLOCKED, **details)
                )
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken third-party plugin must not take Zoo down
                message = f"{type(exc).__name__}: {exc}"
                log.warning("plugin %r failed to load and is skipped: %s", entry_point.name, message)
                self.records.append(
                    PluginRecord(entry_point.name, entry_point.value, PluginStatus.FAILED, error=message, **details)
                )
                continue
            self._register(plugin, entry_point.name, entry_point.value, details)

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin object directly (tests, notebooks, embedding applications)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self._register(plugin, name, getattr(plugin, "__module__", name) or name, {})
        self.check()

    def _register(self, plugin: Any, name: str, module: str, details: dict[str, Any]) -> None:
        try:
            self.manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %r was refused: %s", name, message)
            self.records.append(PluginRecord(name, module, PluginStatus.FAILED, error=message, **details))
            return
        hooks = tuple(sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or ()))
        self.records.append(PluginRecord(name, module, PluginStatus.LOADED, hooks=hooks, **details))

    def check(self, strict: bool = True) -> None:
        """Refuse hook implementations whose names match no hookspec (typos)."""
        known = hookspecs.hook_names()
        for plugin_name, plugin in list(self.manager.list_name_plugin()):
            if plugin is None:
                continue
            for hook_name in _unknown_hooks(self.manager, plugin):
                message = (
                    f"plugin '{plugin_name}' implements unknown hook '{hook_name}'"
                    f"{did_you_mean(hook_name, known)} Fix the plugin, or block it with "
                    f"{DISABLE_ENV}={plugin_name}"
                )
                if strict:
                    raise PluginError(message)
                self.manager.unregister(plugin)
                self.records = [
                    attrs.evolve(record, status=PluginStatus.FAILED, error=message)
                    if record.name == plugin_name
                    else record
                    for record in self.records
                ]
                break

    # -- calling registration hooks -----------------------------------------------------------

    def collect(self, hook_name: str, kind: str, accept: Callable[..., tuple[str, Any]]) -> dict[str, Registration]:
        """Call a ``zoo_register_*`` hook, giving each plugin its own ``register`` callback.

        :param hook_name: e.g. ``"zoo_register_sources"``.
        :param kind: what is registered, for messages (``"source"``).
        :param accept: validates the ``register`` arguments and returns ``(name, value)``.
        :return: registrations by name, in registration order.
        :raises PluginError: when two registrations share a name (the message names both
            plugins) or ``accept`` refuses the arguments.
        """
        found: dict[str, Registration] = {}
        caller = getattr(self.manager.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            mine: dict[str, Registration] = {}

            def register(*args: Any, _plugin: str = impl.plugin_name, _mine: dict = mine, **kwargs: Any) -> None:
                try:
                    name, value = accept(*args, **kwargs)
                except (TypeError, ValueError, ZooError) as exc:
                    raise PluginError(f"plugin '{_plugin}' registered an invalid {kind}: {exc}") from None
                if name in found or name in _mine:
                    other = (found.get(name) or _mine[name]).plugin
                    raise PluginError(
                        f"{kind} '{name}' is registered by both plugin '{other}' and plugin '{_plugin}'; "
                        f"uninstall one, or block one with {DISABLE_ENV}={_plugin}"
                    )
                _mine[name] = Registration(kind, name, value, _plugin)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except ZooError:
                raise
            except Exception as exc:  # a broken plugin must not take the others down: drop what it registered
                self._record_failure(impl.plugin_name, hook_name, exc)
                continue
            found.update(mine)
        return found

    def _record_failure(self, plugin: str, hook_name: str, exc: Exception) -> None:
        failure = HookFailure(plugin, hook_name, f"{type(exc).__name__}: {exc}")
        log.warning("%s; what it registers there is skipped (see `zoo plugins`)", failure, extra={"zoo_deferred": True})
        self.failures.append(failure)
        self.records = [
            attrs.evolve(record, status=PluginStatus.FAILED, error=str(failure).removeprefix(f"plugin '{plugin}' "))
            if record.name == plugin
            else record
            for record in self.records
        ]

    def failure_note(self, *hook_names: str) -> str:
        """``"; plugin 'x' failed in zoo_register_tiers: …"`` for failures of these hooks, else ``""``."""
        failed = [str(failure) for failure in self.failures if failure.hook in hook_names]
        return f"; {'; '.join(failed)} (see `zoo plugins`)" if failed else ""

    def loaded(self) -> list[PluginRecord]:
        return [record for record in self.records if record.status is PluginStatus.LOADED]


def _unknown_hooks(manager: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Hook implementations of ``plugin`` that no hookspec declares."""
    unknown = []
    for caller in manager.get_hookcallers(plugin) or ():
        if caller.spec is None and any(not impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin):
            unknown.append(caller.name)
    return unknown


def load_plugins(
    *, entry_points: bool = True, disabled: Iterable[str] | None = None, strict: bool = True
) -> PluginHost:
    """Build a :class:`PluginHost` with every installed plugin loaded and checked.

    :param entry_points: load the ``zoo`` entry-point group (off for fully isolated tests).
    :param disabled: plugin names to block; defaults to ``$ZOO_DISABLE_PLUGINS``.
    :param strict: raise on misspelled hooks; when false, mark such plugins failed instead.
    """
    host = PluginHost()
    if entry_points:
        host.load_entry_points(disabled)
    host.check(strict=strict)
    return host
