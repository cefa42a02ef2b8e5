"""Every ``zoo_*`` hook a plugin may implement.

Plugins are found through the ``zoo`` entry-point group. Registration hooks receive a
``register`` callback owned by core, so core validates what arrives, refuses duplicates
(naming both plugins) and remembers which plugin provided what. Hook modules must stay
light: import torch or other heavy libraries inside functions, not at module level, so that
listing plugins and names stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

PROJECT_NAME = "zoo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


# --- registration -------------------------------------------------------------------------


@hookspec
def zoo_register_sources(register: Register) -> None:
    """Register backbone sources such as ``timm``, ``torchvision``, ``hf-hub`` or ``file``.

    :param register: call ``register(source)`` once per source; ``source`` follows
        :class:`zoo_core.sources.Source` (a ``name``, a bare-name ``priority``, and methods to
        index, resolve and build models). Registering a name twice, from one plugin or two,
        is an error that names both plugins.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_tiers(register: Register) -> None:
    """Register tier families (model sizes T1 … Tn with rules that carry weights between them).

    :param register: call ``register(family)`` with a :class:`zoo_core.specs.FamilySpec`.
        Families can also be declared in ``registry.toml`` under ``[families.NAME]``; a
        catalog entry with the same name replaces the plugin's family.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_heads(register: Register) -> None:
    """Register head factories by name (``linear``, ``mlp``, …).

    :param register: call ``register(name, factory, description="")`` where ``factory`` is a
        callable ``factory(in_features, out_features, **options) -> nn.Module`` or an import
        string ``"package.module:attribute"`` resolved only when a head is built.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_necks(register: Register) -> None:
    """Register neck factories by name (modules between backbone and heads).

    :param register: call ``register(name, factory, description="")`` where ``factory`` is a
        callable ``factory(in_features, **options) -> nn.Module`` (the module must expose an
        ``out_features`` attribute) or an import string resolved lazily.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_tasks(register: Register) -> None:
    """Register tasks: what is predicted, how data is read, the loss and the metrics.

    :param register: call ``register(task)`` with an object following
        :class:`zoo_core.engine.task.Task`; its ``name`` is what ``--task`` selects.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_recipes(register: Register) -> None:
    """Register fine-tune recipes.

    :param register: call ``register(recipe)`` with a :class:`zoo_core.specs.Recipe` or a
        mapping in the ``[recipes.NAME]`` TOML layout plus a ``name`` key. Recipes in
        ``registry.toml`` files replace plugin recipes of the same name.
    :return: nothing; results are collected through ``register``.
    """


# --- knowledge about particular models ----------------------------------------------------


@hookspec(firstresult=True)
def zoo_layer_groups(model: Any, spec: Any, granularity: str) -> Any:
    """Return the ordered layer groups of ``model``, or ``None`` to let another plugin answer.

    Stops at first non-None result. Zoo's own implementations (timm ``group_matcher``,
    torchvision heuristics, ZooModel neck and heads) are ``trylast``, so any plugin overrides
    them; when no plugin answers, core falls back to one group per top-level child module.

    :param model: the ``torch.nn.Module`` to partition.
    :param spec: the :class:`zoo_core.specs.ResolvedModel` it was built from, or ``None``.
    :param granularity: ``"coarse"`` (stem, stages, head) or ``"fine"`` (one group per block,
        as timm's layer decay uses); implementations may ignore it.
    :return: a :class:`zoo_core.groups.LayerGroups`, or a sequence of
        ``(group_name, role, [parameter names])`` tuples ordered from input to output, where
        role is ``"backbone"``, ``"neck"`` or ``"head"``; ``None`` to pass.
    """


@hookspec
def zoo_transfer_rules(source: Any, target: Any) -> Any:
    """Contribute rules for carrying weights from ``source`` into ``target``.

    All non-None results are merged, in hook call order, after registry and before CLI rules.

    :param source: :class:`zoo_core.specs.ResolvedModel` of the source, or ``None`` when the
        source is a bare checkpoint file without provenance.
    :param target: :class:`zoo_core.specs.ResolvedModel` of the target model.
    :return: a :class:`zoo_core.specs.TransferRules`, or ``None`` when the plugin has no
        opinion about this pair.
    """


@hookspec(firstresult=True)
def zoo_unfreeze_schedule(recipe: Any, groups: Any) -> Any:
    """Return which groups train in each epoch of each stage.

    Stops at first non-None result. The built-in implementation (``trylast``) reads each
    stage's ``train`` and ``unfreeze_every`` settings.

    :param recipe: the :class:`zoo_core.specs.Recipe` being run.
    :param groups: the model's :class:`zoo_core.groups.LayerGroups`.
    :return: a callable ``schedule(stage_index, epoch_in_stage) -> frozenset[str]`` of
        trainable group names, or ``None`` to pass.
    """


# --- engine events --------------------------------------------------------------------------


@hookspec
def zoo_on_stage_start(run: Any, stage_index: int, stage: Any) -> None:
    """Called on every process before the first epoch of a stage.

    :param run: the :class:`zoo_core.engine.run.RunInfo` of the run (run folder, recipe,
        model name, rank).
    :param stage_index: index of the stage in the recipe, from 0.
    :param stage: the :class:`zoo_core.specs.Stage` about to run.
    :return: nothing.
    """


@hookspec
def zoo_on_epoch_end(run: Any, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called on every process after validation at the end of each epoch.

    :param run: the :class:`zoo_core.engine.run.RunInfo` of the run.
    :param epoch: global epoch index, from 0.
    :param metrics: the row written to ``metrics.jsonl`` (losses, metrics, learning rates).
    :return: nothing.
    """


@hookspec
def zoo_on_stage_end(run: Any, stage_index: int, stage: Any, metrics: Mapping[str, float]) -> None:
    """Called on every process when a stage finishes (all epochs run, or stopped early).

    :param run: the :class:`zoo_core.engine.run.RunInfo` of the run.
    :param stage_index: index of the stage that ended.
    :param stage: the :class:`zoo_core.specs.Stage` that ended.
    :param metrics: the last epoch's metrics row.
    :return: nothing.
    """


@hookspec
def zoo_on_checkpoint_saved(run: Any, path: str, kind: str) -> None:
    """Called on the saving process (rank 0) after a checkpoint is written atomically.

    :param run: the :class:`zoo_core.engine.run.RunInfo` of the run.
    :param path: the checkpoint file.
    :param kind: ``"last"``, ``"best"`` or ``"stage"``.
    :return: nothing.
    """


def hook_names() -> list[str]:
    """Names of every hookspec declared in this module, in declaration order."""
    return [name for name in globals() if name.startswith("zoo_")]
