"""Typed errors for input a user can fix.

Every `ZooError` is printed by the CLI as one line, ``zoo: error: <message>``, with exit
status 2. Messages name the file, key or name at fault and say what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Bad input or state that the user can fix; never a bug in Zoo itself."""


class PluginError(ZooError):
    """A plugin is broken in a way that would make results silently wrong."""


class CatalogError(ZooError):
    """A registry.toml / zoo.toml entry is malformed."""


class UnknownNameError(ZooError):
    """A model, tier, recipe, group or plugin name that nothing registered."""


class WeightsError(ZooError):
    """Pretrained weights are missing, unpinned or do not match their pin."""


class OfflineError(WeightsError):
    """Weights are not cached and the environment forbids downloading them."""


class UnreachableError(WeightsError):
    """Weights must be downloaded, but their host does not accept connections (no network, a firewall)."""


class CheckpointError(ZooError):
    """A checkpoint file is unsafe, corrupt, truncated or lacks required content."""


class NonFiniteError(CheckpointError):
    """Weights hold NaN or infinite values; ``names`` are the tensors at fault."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class TransferError(ZooError):
    """A transfer plan cannot be built or violates its policy."""


class GroupError(ZooError):
    """Layer groups are not an exhaustive, non-overlapping partition."""


class RecipeError(ZooError):
    """A recipe is malformed or asks for something the model cannot do."""


class DataError(ZooError):
    """A data folder is missing, empty or malformed."""


class RunError(ZooError):
    """A run folder cannot be resumed or a run had to stop."""


class FrozenMovedError(RunError):
    """Tensors of a frozen group (or pinned BatchNorm statistics) changed during an epoch; ``names`` are they."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class GroupNotLearningError(RunError):
    """A group that trains in a stage got no gradient or did not change (``--strict-groups``)."""

    def __init__(self, message: str, group: str = "") -> None:
        super().__init__(message)
        self.group = group


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" - did you mean 'x'?"`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" - did you mean '{matches[0]}'?" if matches else ""
