"""Every ``zoo_*`` hook a plugin may implement.

Plugins are found through the ``zoo`` entry-point group. Registration hooks receive a
``register`` callback owned by core, so core validates what arrives, refuses duplicates
(naming both plugins) and remembers which plugin provided what. Hook modules must stay
light: import torch or other heavy libraries inside functions, not at module level, so that
listing plugins and names stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # the real types, without importing torch when plugins are listed
    from torch import nn

    from .anatomy import FeatureMaps
    from .datasets import DatasetReader
    from .engine.options import RunInfo
    from .engine.task import Task
    from .groups import LayerGroups
    from .registry import Registry
    from .sources import Source
    from .specs import Chain, FamilySpec, Granularity, InputConfig, Recipe, ResolvedModel, Stage, TransferRules
    from .tensorops import ClassRows

PROJECT_NAME = "zoo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- what the register callbacks take -------------------------------------------------------


class RegisterSource(Protocol):
    def __call__(self, source: Source, /) -> None: ...


class RegisterFamily(Protocol):
    def __call__(self, family: FamilySpec | Mapping[str, Any], /) -> None: ...


class RegisterFactory(Protocol):
    def __call__(self, name: str, factory: Callable[..., nn.Module] | str, /, description: str = "") -> None: ...


class RegisterTask(Protocol):
    def __call__(self, task: Task, /) -> None: ...


class RegisterRecipe(Protocol):
    def __call__(self, recipe: Recipe | Mapping[str, Any], /) -> None: ...


class RegisterDatasetReader(Protocol):
    def __call__(self, reader: DatasetReader, /) -> None: ...


class RegisterChain(Protocol):
    def __call__(self, chain: Chain | Mapping[str, Any], /) -> None: ...


GroupAssignments = Sequence[tuple[str, str, Sequence[str]]]


# --- registration -------------------------------------------------------------------------


@hookspec
def zoo_register_sources(register: RegisterSource) -> None:
    """Register backbone sources such as ``timm``, ``torchvision``, ``hf-hub`` or ``file``.

    :param register: call ``register(source)`` once per source; ``source`` follows
        :class:`zoo_core.sources.Source` (a ``name``, a bare-name ``priority``, and methods to
        index, resolve and build models). Registering a name twice, from one plugin or two,
        is an error that names both plugins.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_tiers(register: RegisterFamily) -> None:
    """Register tier families (model sizes T1 … Tn with rules that carry weights between them).

    :param register: call ``register(family)`` with a :class:`zoo_core.specs.FamilySpec`.
        Families can also be declared in ``registry.toml`` under ``[families.NAME]``; a
        catalog entry with the same name replaces the plugin's family.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_heads(register: RegisterFactory) -> None:
    """Register head factories by name (``linear``, ``mlp``, …).

    :param register: call ``register(name, factory, description="")`` where ``factory`` is a
        callable ``factory(in_features, out_features, **options) -> nn.Module`` or an import
        string ``"package.module:attribute"`` resolved only when a head is built.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_necks(register: RegisterFactory) -> None:
    """Register neck factories by name (modules between backbone and heads).

    :param register: call ``register(name, factory, description="")`` where ``factory`` is a
        callable ``factory(in_features, **options) -> nn.Module`` (the module must expose an
        ``out_features`` attribute) or an import string resolved lazily.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_tasks(register: RegisterTask) -> None:
    """Register tasks: what is predicted, how data is read, the loss and the metrics.

    :param register: call ``register(task)`` with an object following
        :class:`zoo_core.engine.task.Task`; its ``name`` is what ``--task`` selects.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_datasets(register: RegisterDatasetReader) -> None:
    """Register dataset readers: the data layouts a task reads (Tiny ImageNet, ImageNet, CSV lists …).

    :param register: call ``register(reader)`` once per reader; ``reader`` follows
        :class:`zoo_core.datasets.DatasetReader`: a ``name`` that ``--data-format`` selects, the
        ``task`` whose items it reads, a one-line ``layout`` shown when a path matches no reader,
        an integer ``priority`` (auto-detection tries lower first: specific layouts before
        generic ones), ``recognises(root) -> bool`` and ``read(root)``, whose result the task
        defines (classification's is ``zoo_classification.readers.ClassificationLayout``).
        Registering a name twice, from one plugin or two, is an error that names both plugins.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_recipes(register: RegisterRecipe) -> None:
    """Register fine-tune recipes.

    :param register: call ``register(recipe)`` with a :class:`zoo_core.specs.Recipe` or a
        mapping in the ``[recipes.NAME]`` TOML layout plus a ``name`` key. Recipes in
        ``registry.toml`` files replace plugin recipes of the same name.
    :return: nothing; results are collected through ``register``.
    """


@hookspec
def zoo_register_chains(register: RegisterChain) -> None:
    """Register chains: recipes run over datasets in order, each step starting from the last one's best weights.

    :param register: call ``register(chain)`` with a :class:`zoo_core.specs.Chain` or a mapping
        in the ``[chains.NAME]`` TOML layout (``model``, optional ``recipe``, ``task``,
        ``image_size``, and a ``steps`` list of ``name``/``data``/``recipe``/``set``/``classes``
        tables) plus a ``name`` key. Chains in ``registry.toml`` files replace plugin chains of
        the same name.
    :return: nothing; results are collected through ``register``.
    """


# --- knowledge about particular models ----------------------------------------------------


@hookspec(firstresult=True)
def zoo_layer_groups(
    model: nn.Module, spec: ResolvedModel | None, granularity: Granularity, registry: Registry
) -> LayerGroups | GroupAssignments | None:
    """Return the ordered layer groups of ``model``, or ``None`` to let another plugin answer.

    Stops at first non-None result. Zoo's own implementations (timm ``group_matcher``,
    torchvision heuristics, ZooModel neck and heads) are ``trylast``, so any plugin overrides
    them; when no plugin answers, core falls back to one group per top-level child module.

    :param model: the ``torch.nn.Module`` to partition.
    :param spec: the :class:`zoo_core.specs.ResolvedModel` it was built from, or ``None``.
    :param granularity: :class:`zoo_core.specs.Granularity` (a ``str`` enum): ``"coarse"``
        (stem, stages, head) or ``"fine"`` (one group per block, as timm's layer decay uses);
        implementations may ignore it.
    :param registry: the registry in use, to ask for the groups of a part
        (``zoo_core.groups.layer_groups(model.backbone, registry=registry)``); never reach for
        a process-wide default instead.
    :return: a :class:`zoo_core.groups.LayerGroups`, or a sequence of
        ``(group_name, role, [parameter names])`` tuples ordered from input to output, where
        role is ``"backbone"``, ``"neck"`` or ``"head"``; ``None`` to pass.
    """


@hookspec(firstresult=True)
def zoo_classifier(model: nn.Module) -> tuple[str, nn.Module] | None:
    """Return the layer of ``model`` that produces its class scores, or ``None`` to pass.

    Stops at first non-None result. The timm plugin answers with ``get_classifier()``, Zoo's
    own plugin with a ZooModel's primary head (both ``trylast``); without an answer, core takes
    the last ``nn.Linear`` (or 1x1 convolution) in the module tree.

    :param model: the model (unwrapped from DDP and ``torch.compile``).
    :return: ``(dotted module name, module)``; raise :class:`zoo_core.errors.ZooError` when the
        model's classifier was removed (``nn.Identity``).
    """


@hookspec(firstresult=True)
def zoo_class_rows(model: nn.Module) -> Sequence[ClassRows] | None:
    """Return the tensors of ``model`` whose rows are its classes, and how the rows are laid out.

    Stops at first non-None result. Class-aware transfer (``remap-classes``) copies the rows of
    the classes both models name. Without an answer, core takes the weight and bias of the
    layer :func:`zoo_classifier` finds, one row per class. Detection heads answer for their
    own layouts: RetinaNet's anchors times classes, Faster R-CNN's background row first and
    four box rows per class.

    :param model: the model (unwrapped from DDP and ``torch.compile``).
    :return: :class:`zoo_core.tensorops.ClassRows`, one per state-dict key; an empty sequence for
        a model without class rows; ``None`` to pass.
    """


@hookspec(firstresult=True)
def zoo_feature_maps(model: nn.Module, registry: Registry) -> FeatureMaps | None:
    """Return how to take ``model``'s multi-scale feature maps (for a detector's neck).

    Stops at first non-None result. The timm plugin uses ``forward_intermediates`` and
    ``feature_info``; Zoo's own answer (``trylast``) traces the model with torchvision's
    feature extraction, one map per backbone layer group after the stem. Either way the
    model's parameters keep their names, so weights move between classifier and detector
    without renames.

    :param model: the backbone, its classifier removed.
    :param registry: the registry in use (for the model's layer groups).
    :return: a :class:`zoo_core.anatomy.FeatureMaps`, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def zoo_reset_classifier(model: nn.Module, num_classes: int) -> nn.Module | None:
    """Replace the classifier of ``model`` with a fresh one of ``num_classes`` outputs.

    Stops at first non-None result. The timm plugin calls timm's ``reset_classifier`` so the
    model's ``num_classes`` and config stay in step; without an answer, core swaps the module
    found by :func:`zoo_classifier` for a new ``nn.Linear``.

    :param model: the model to change in place.
    :param num_classes: outputs of the new classifier; ``0`` removes it, so that the model
        returns the features its classifier consumed.
    :return: the new classifier module (``nn.Identity`` for 0), or ``None`` to pass.
    """


@hookspec(firstresult=True)
def zoo_input_config(model: nn.Module) -> InputConfig | None:
    """Return how inputs to ``model`` are prepared: size, channels, mean, std, crop fraction.

    Stops at first non-None result. The timm plugin reads the model's ``pretrained_cfg``;
    without an answer, core uses ImageNet statistics at 224 px with the first convolution's
    input channels.

    :param model: the model (a ZooModel's backbone is asked for a ZooModel).
    :return: a :class:`zoo_core.specs.InputConfig`, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def zoo_head_dropout(model: nn.Module) -> float | None:
    """Return the dropout ``model`` applies before its classifier without a module for it.

    Stops at first non-None result. timm applies ``drop_rate`` functionally, so no module in
    the tree shows it; the feature cache must know, because cached features would skip it.

    :param model: the model.
    :return: the dropout probability (``0.0`` for none), or ``None`` to pass.
    """


@hookspec
def zoo_transfer_rules(source: ResolvedModel | None, target: ResolvedModel) -> TransferRules | None:
    """Contribute rules for carrying weights from ``source`` into ``target``.

    All non-None results are merged, in hook call order, after registry and before CLI rules.

    :param source: :class:`zoo_core.specs.ResolvedModel` of the source, or ``None`` when the
        source is a bare checkpoint file without provenance.
    :param target: :class:`zoo_core.specs.ResolvedModel` of the target model.
    :return: a :class:`zoo_core.specs.TransferRules`, or ``None`` when the plugin has no
        opinion about this pair.
    """


@hookspec(firstresult=True)
def zoo_unfreeze_schedule(recipe: Recipe, groups: LayerGroups) -> Callable[[int, int], frozenset[str]] | None:
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
def zoo_on_stage_start(run: RunInfo, stage_index: int, stage: Stage) -> None:
    """Called on every process before the first epoch of a stage.

    :param run: the :class:`zoo_core.engine.options.RunInfo` of the run (run folder, recipe,
        model name, rank).
    :param stage_index: index of the stage in the recipe, from 0.
    :param stage: the :class:`zoo_core.specs.Stage` about to run.
    :return: nothing.
    """


@hookspec
def zoo_on_epoch_end(run: RunInfo, epoch: int, metrics: Mapping[str, Any]) -> None:
    """Called on every process after validation at the end of each epoch.

    :param run: the :class:`zoo_core.engine.options.RunInfo` of the run.
    :param epoch: global epoch index, from 0.
    :param metrics: the row written to ``metrics.jsonl`` (losses, metrics, learning rates).
    :return: nothing.
    """


@hookspec
def zoo_on_stage_end(run: RunInfo, stage_index: int, stage: Stage, metrics: Mapping[str, Any]) -> None:
    """Called on every process when a stage finishes (all epochs run, or stopped early).

    :param run: the :class:`zoo_core.engine.options.RunInfo` of the run.
    :param stage_index: index of the stage that ended.
    :param stage: the :class:`zoo_core.specs.Stage` that ended.
    :param metrics: the last epoch's metrics row.
    :return: nothing.
    """


@hookspec
def zoo_on_checkpoint_saved(run: RunInfo, path: str, kind: str) -> None:
    """Called on the saving process (rank 0) after a checkpoint is written atomically.

    :param run: the :class:`zoo_core.engine.options.RunInfo` of the run.
    :param path: the checkpoint file.
    :param kind: ``"last"``, ``"best"`` or ``"stage"``.
    :return: nothing.
    """


def hook_names() -> list[str]:
    """Names of every hookspec declared in this module, in declaration order."""
    return [name for name in globals() if name.startswith("zoo_")]
