"""Frozen, validated specifications: what registries, catalogs and recipes are made of.

Specs hold no torch objects, so catalogs and listings stay light. Validators raise
:class:`SpecValueError`, which names the attribute at fault; :mod:`zoo_core.catalog` turns it
into ``file: key.path: message``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs


class SpecValueError(ValueError):
    """A spec attribute holds an invalid value; ``attribute`` names it (dotted for sub-keys)."""

    def __init__(self, attribute: str, message: str) -> None:
        super().__init__(f"{attribute}: {message}")
        self.attribute = attribute
        self.message = message


# --- choices ---------------------------------------------------------------------------------


class Role(enum.Enum):
    """Where a layer group sits in the model; freeze levels and LR mappings address roles."""

    BACKBONE = "backbone"
    NECK = "neck"
    HEAD = "head"


class ShapePolicy(enum.Enum):
    """What a transfer does with a tensor whose shape differs between source and target."""

    SKIP = "skip"  # leave the target tensor at its initialisation
    ADAPT = "adapt"  # input-channel adaptation for first convs, otherwise truncate / zero-pad


class BnMode(enum.Enum):
    """How BatchNorm layers behave during a stage."""

    FROZEN = "frozen"  # BN inside frozen groups keeps its running stats and affine params
    TRAIN = "train"  # BN always updates running stats (Lightning-style freeze)
    EVAL = "eval"  # every BN uses running stats, trainable or not (small-batch fine-tuning)


class ScheduleKind(enum.Enum):
    """Learning-rate shape within a stage, after warmup."""

    COSINE = "cosine"
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE_RESTARTS = "cosine_restarts"  # SGDR: cosine cycles of restart_epochs, each restart_mult times longer


class DriftAction(enum.Enum):
    """What the drift guard does when a loss leaves its band."""

    WARN = "warn"
    STOP = "stop"


class DriftWatch(enum.Enum):
    """Which side of the band the drift guard watches."""

    RISE = "rise"  # only losses that grow beyond the band
    BOTH = "both"  # losses that leave the band on either side


class Optimizer(enum.Enum):
    ADAMW = "adamw"
    SGD = "sgd"


class FreezeLevel(enum.IntEnum):
    """MultiGridDet's freeze levels: what a stage leaves frozen (and so, what trains)."""

    NONE = 0  # nothing frozen: every group trains
    BACKBONE = 1  # the backbone frozen: neck and heads train
    ALL_BUT_HEADS = 2  # everything frozen but the heads

    @property
    def frozen_roles(self) -> frozenset[Role]:
        return {
            FreezeLevel.NONE: frozenset(),
            FreezeLevel.BACKBONE: frozenset({Role.BACKBONE}),
            FreezeLevel.ALL_BUT_HEADS: frozenset({Role.BACKBONE, Role.NECK}),
        }[self]

    @property
    def trains(self) -> str:
        """What trains, in words (``zoo recipes``)."""
        return {FreezeLevel.NONE: "all", FreezeLevel.BACKBONE: "all but backbone", FreezeLevel.ALL_BUT_HEADS: "heads"}[self]

    @classmethod
    def parse(cls, value: Any, attribute: str = "freeze") -> FreezeLevel:
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
            return cls(value)
        raise SpecValueError(attribute, f"must be 0 (none), 1 (backbone) or 2 (all but heads), got {value!r}")


class Granularity(str, enum.Enum):
    """How finely layer groups split a backbone (a ``str`` enum: plugins may compare with text)."""

    COARSE = "coarse"  # stem, stages, head
    FINE = "fine"  # one group per block, as timm's layer decay uses


class MonitorMode(str, enum.Enum):
    """Whether a monitored metric improves downwards (a loss) or upwards (an accuracy)."""

    MIN = "min"
    MAX = "max"

    def improves(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """``value`` beats ``best`` by more than ``min_delta`` (anything beats no best yet)."""
        if best is None:
            return True
        return value < best - min_delta if self is MonitorMode.MIN else value > best + min_delta


# --- plain data out of specs ---------------------------------------------------------------------

OMIT_EMPTY = {"omit_empty": True}  # field metadata: left out of to_plain when empty
NOT_SERIALISED = {"serialise": False}  # field metadata: never written (e.g. where a spec came from)


def to_plain(value: Any, *, keep_none: bool = False) -> Any:
    """JSON-ready data from a spec: attrs fields in order, enums as their values, tuples as lists.

    Fields whose value is ``None`` are left out unless ``keep_none``; a spec class with its own
    ``to_plain`` method (a union such as :class:`LrSpec`) answers for itself.
    """
    custom = getattr(type(value), "to_plain", None)
    if custom is not None and attrs.has(type(value)):
        return custom(value)
    if attrs.has(type(value)):
        data = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if not field.metadata.get("serialise", True) or (item is None and not keep_none):
                continue
            if field.metadata.get("omit_empty") and not item:
                continue
            data[field.name] = to_plain(item, keep_none=keep_none)
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {key: to_plain(item, keep_none=keep_none) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(item, keep_none=keep_none) for item in value]
    return value


def spec_keys(spec: type) -> tuple[str, ...]:
    """The keys a catalog table for ``spec`` may hold: its serialised attrs fields."""
    return tuple(field.name for field in attrs.fields(spec) if field.metadata.get("serialise", True))


# --- validators and converters --------------------------------------------------------------


def _freeze_mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    # a private copy: specs are frozen (no reassignment) and stay picklable and deep-copyable
    return dict(value or {})


def _is_number(value: Any) -> bool:
    """An int or a float; ``True`` is an int to Python but never a number in a recipe."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (_is_number(value) and value > 0):
        raise SpecValueError(attribute.name, f"must be > 0, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (_is_number(value) and value >= 0):
        raise SpecValueError(attribute.name, f"must be >= 0, got {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise SpecValueError(attribute.name, f"must be a whole number > 0, got {value!r}")


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (_is_number(value) and 0 <= value <= 1):
        raise SpecValueError(attribute.name, f"must be between 0 and 1, got {value!r}")




def _whole_number(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise SpecValueError(attribute.name, f"must be a whole number >= 0, got {value!r}")


def _regexes(instance: Any, attribute: attrs.Attribute, value: tuple[Any, ...]) -> None:
    for index, item in enumerate(value):
        patterns = item if isinstance(item, tuple) else (item,)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise SpecValueError(f"{attribute.name}[{index}]", f"bad regex {pattern!r}: {exc}") from None


def _enum_converter(enum_type: type[enum.Enum], attribute: str):
    def convert(value: Any) -> Any:
        if value is None or isinstance(value, enum_type):
            return value
        try:
            return enum_type(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in enum_type)
            raise SpecValueError(attribute, f"must be one of {choices}, got {value!r}") from None

    return convert


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _rename_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value or ():
        if isinstance(item, Mapping):
            pairs.extend((str(k), str(v)) for k, v in item.items())
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
        else:
            raise SpecValueError("rename", f"each rule is a [pattern, replacement] pair, got {item!r}")
    return tuple(pairs)


# --- weights, heads, tiers -------------------------------------------------------------------


@attrs.frozen
class Origin:
    """Where a spec came from: a catalog file and key path, or a plugin."""

    file: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.key}" if self.key else self.file


BUILTIN = Origin("built-in")


@attrs.frozen
class WeightsPin:
    """Where pretrained weights live and the sha256 they must have."""

    url: str | None = None
    sha256: str | None = attrs.field(default=None)
    filename: str | None = None

    @sha256.validator
    def _check_sha(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise SpecValueError("sha256", f"must be 64 lowercase hex digits, got {value!r}")

    @property
    def file_name(self) -> str:
        if self.filename:
            return self.filename
        if self.url:
            return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "weights.bin"
        return "weights.bin"


@attrs.frozen
class AliasSpec:
    """A catalog alias: a short name for another name, optionally with pinned weights."""

    name: str
    target: str
    weights: WeightsPin | None = None
    num_classes: int | None = attrs.field(default=None, validator=_positive_int)
    class_names: tuple[str, ...] | None = None
    description: str = ""
    origin: Origin = BUILTIN


@attrs.frozen
class HeadSpec:
    """A head built by a registered factory; ``out`` of ``None`` means ``num_classes``."""

    kind: str = "linear"
    out: int | None = attrs.field(default=None, validator=_positive_int)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)


@attrs.frozen
class NeckSpec:
    """A neck built by a registered factory between backbone and heads."""

    kind: str
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)


@attrs.frozen
class TransferRules:
    """Rules for carrying weights between two models; merged from hooks, catalog and CLI.

    ``None`` means "no opinion" so that merging keeps earlier choices.
    """

    include: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str, validator=_regexes)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str, validator=_regexes)
    rename: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_rename_pairs, validator=_regexes)
    shape: ShapePolicy | None = attrs.field(default=None, converter=_enum_converter(ShapePolicy, "shape"))
    suffix_match: bool | None = None
    class_aware: bool | None = None
    strip_prefixes: tuple[str, ...] | None = None
    input_channels: bool | None = None  # adapt the first convolution to the target's input channels

    def merged(self, later: TransferRules | None) -> TransferRules:
        """Combine with ``later``: lists concatenate, later scalar choices win."""
        if later is None:
            return self
        return TransferRules(
            include=self.include + later.include,
            exclude=self.exclude + later.exclude,
            rename=self.rename + later.rename,
            shape=later.shape if later.shape is not None else self.shape,
            suffix_match=later.suffix_match if later.suffix_match is not None else self.suffix_match,
            class_aware=later.class_aware if later.class_aware is not None else self.class_aware,
            strip_prefixes=later.strip_prefixes if later.strip_prefixes is not None else self.strip_prefixes,
            input_channels=later.input_channels if later.input_channels is not None else self.input_channels,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self, keep_none=True)


DEFAULT_TIER_BUILDER = "zoo_core.zoomodel:build_tier"


@attrs.frozen
class TierSpec:
    """One member of a tier family: a backbone, an optional neck and named heads."""

    family: str
    tier: str
    rank: int = attrs.field(validator=_non_negative)
    backbone: str
    heads: Mapping[str, HeadSpec] = attrs.field(
        factory=lambda: {"classifier": HeadSpec()}, converter=_freeze_mapping
    )
    neck: NeckSpec | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    weights: WeightsPin | None = None
    num_classes: int | None = attrs.field(default=None, validator=_positive_int)
    class_names: tuple[str, ...] | None = None
    description: str = ""
    origin: Origin = BUILTIN

    def __attrs_post_init__(self) -> None:
        if not self.heads:
            raise SpecValueError("heads", "a tier needs at least one head")

    @property
    def name(self) -> str:
        return f"{self.family}/{self.tier}"


@attrs.frozen
class FamilySpec:
    """A tier family: tiers ordered by rank, the builder that makes them, transfer rules."""

    name: str
    tiers: Mapping[str, TierSpec] = attrs.field(converter=_freeze_mapping)
    builder: str = DEFAULT_TIER_BUILDER
    rules: TransferRules = attrs.field(factory=TransferRules)
    description: str = ""
    origin: Origin = BUILTIN

    def __attrs_post_init__(self) -> None:
        if not self.tiers:
            raise SpecValueError("tiers", "a family needs at least one tier")
        if not re.fullmatch(r"[A-Za-z_][\w.:]*:[A-Za-z_][\w.]*", self.builder):
            raise SpecValueError("builder", f"must be an import string 'package.module:function', got {self.builder!r}")
        for key, tier in self.tiers.items():
            if tier.family != self.name or tier.tier != key:
                raise SpecValueError(f"tiers.{key}", f"belongs to {tier.name}, not {self.name}/{key}")

    def ordered(self) -> list[TierSpec]:
        return sorted(self.tiers.values(), key=lambda tier: (tier.rank, tier.tier))


# --- recipes ---------------------------------------------------------------------------------


def _lr_values(instance: Any, attribute: attrs.Attribute, value: Mapping[str, float]) -> None:
    for key, lr in value.items():
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)):
            raise SpecValueError(f"lr.{key}", f"must be > 0, got {lr!r}")


@attrs.frozen
class LrSpec:
    """Learning rates of a stage: one value, a per-group/per-role mapping, or base + decay.

    ``decay`` divides the rate once per group counted down from the heads (ULMFiT's 2.6);
    timm's ``layer_decay = 0.75`` is the same as ``decay = 1 / 0.75``.
    """

    value: float | None = attrs.field(default=None, validator=_positive)
    per_group: Mapping[str, float] = attrs.field(factory=dict, converter=_freeze_mapping, validator=_lr_values)
    base: float | None = attrs.field(default=None, validator=_positive)
    decay: float | None = attrs.field(default=None, validator=_positive)

    def __attrs_post_init__(self) -> None:
        given = [self.value is not None, bool(self.per_group), self.base is not None]
        if sum(given) != 1:
            raise SpecValueError("lr", "give exactly one of a number, a {group = lr} table, or {base, decay}")
        if self.decay is not None and self.base is None:
            raise SpecValueError("lr.decay", "needs lr.base")

    def highest(self) -> float:
        if self.value is not None:
            return self.value
        if self.base is not None:
            return self.base
        return max(self.per_group.values())

    def to_plain(self) -> float | dict[str, float]:
        """The catalog's own spelling: a number, a ``{group = lr}`` table or ``{base, decay}``."""
        if self.value is not None:
            return self.value
        if self.base is not None:
            return {"base": self.base, **({"decay": self.decay} if self.decay is not None else {})}
        return dict(self.per_group)


@attrs.frozen
class EarlyStop:
    """Stop the stage when ``monitor`` has not improved for ``patience`` epochs."""

    monitor: str = "val_loss"
    mode: MonitorMode = attrs.field(default=MonitorMode.MIN, converter=_enum_converter(MonitorMode, "mode"))
    patience: int = attrs.field(default=3, validator=_positive_int)
    min_delta: float = attrs.field(default=0.0, validator=_non_negative)


@attrs.frozen
class DriftGuard:
    """Watch validation loss components against the baseline measured before training."""

    band: float = attrs.field(default=0.2, validator=_positive)
    action: DriftAction = attrs.field(default=DriftAction.WARN, converter=_enum_converter(DriftAction, "action"))
    watch: DriftWatch = attrs.field(default=DriftWatch.RISE, converter=_enum_converter(DriftWatch, "watch"))
    components: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)


# what a stage's ``loss_norm`` may list, for heads whose losses are sums (MultiGridDet's grid head):
# ``batch`` divides by the images, ``positives`` also by the assigned cells per image, ``grid`` by
# every cell of every image
LOSS_NORM_MODES = ("batch", "positives", "grid")


@attrs.frozen
class Stage:
    """One stage of a recipe. Exactly one of ``freeze`` (level) and ``train`` (groups) applies."""

    epochs: int = attrs.field(validator=_positive_int)
    lr: LrSpec
    name: str = ""
    freeze: FreezeLevel | None = attrs.field(default=None, converter=lambda value: None if value is None else FreezeLevel.parse(value))
    train: tuple[str, ...] | None = attrs.field(default=None)
    unfreeze_every: int | None = attrs.field(default=None, validator=_positive_int)
    warmup_epochs: float = attrs.field(default=0.0, validator=_non_negative)
    schedule: ScheduleKind = attrs.field(default=ScheduleKind.COSINE, converter=_enum_converter(ScheduleKind, "schedule"))
    augment: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    bn: BnMode = attrs.field(default=BnMode.FROZEN, converter=_enum_converter(BnMode, "bn"))
    ema: float | None = attrs.field(default=None, converter=lambda value: None if value in (0, False) else value)
    grad_clip: float | None = attrs.field(default=None, validator=_positive)
    loss_scales: Mapping[str, float] = attrs.field(factory=dict, converter=_freeze_mapping, metadata=OMIT_EMPTY)
    loss_norm: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str, metadata=OMIT_EMPTY)
    early_stop: EarlyStop | None = None
    drift_guard: DriftGuard | None = None
    batch_size: int | None = attrs.field(default=None, validator=_positive_int)
    weight_decay: float | None = attrs.field(default=None, validator=_non_negative)
    restart_epochs: float | None = attrs.field(default=None, validator=_positive)  # cosine_restarts: the first cycle
    restart_mult: float | None = attrs.field(default=None, validator=_positive)  # cosine_restarts: each cycle's growth

    @ema.validator
    def _check_ema(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is not None and not (isinstance(value, float) and 0 < value < 1):
            raise SpecValueError("ema", f"is the EMA decay and must be between 0 and 1 (0 turns it off), got {value!r}")

    @loss_scales.validator
    def _check_scales(self, attribute: attrs.Attribute, value: Mapping[str, float]) -> None:
        for key, scale in value.items():
            if not (_is_number(scale) and scale >= 0):
                raise SpecValueError(f"loss_scales.{key}", f"must be >= 0, got {scale!r}")

    @loss_norm.validator
    def _check_norm(self, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
        for mode in value:
            if mode not in LOSS_NORM_MODES:
                raise SpecValueError("loss_norm", f"unknown mode {mode!r}; the modes are {', '.join(LOSS_NORM_MODES)}")
        if len(set(value)) != len(value):
            raise SpecValueError("loss_norm", f"lists a mode twice: {list(value)}")
        if "grid" in value and len(value) > 1:
            raise SpecValueError(
                "loss_norm", 'grid already averages over every cell of every image; give ["grid"] alone'
            )
        if "positives" in value and "batch" not in value:
            raise SpecValueError(
                "loss_norm",
                'positives divides per image\'s assigned cells and goes with batch: give ["batch", "positives"]',
            )

    def __attrs_post_init__(self) -> None:
        if self.freeze is not None and self.train is not None:
            raise SpecValueError("train", "give either 'freeze' (a level) or 'train' (groups), not both")
        if self.warmup_epochs > self.epochs:
            raise SpecValueError("warmup_epochs", f"must not exceed epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.lr.decay is not None and self.lr.decay < 1:
            raise SpecValueError("lr.decay", f"divides the rate per group and must be >= 1, got {self.lr.decay}")
        restarts = self.schedule is ScheduleKind.COSINE_RESTARTS
        if restarts and self.restart_epochs is None:
            raise SpecValueError("restart_epochs", "schedule 'cosine_restarts' needs the first cycle's length in epochs")
        if not restarts and (self.restart_epochs is not None or self.restart_mult is not None):
            raise SpecValueError("restart_epochs", f"applies to schedule 'cosine_restarts' only, not '{self.schedule.value}'")
        if self.restart_mult is not None and self.restart_mult < 1:
            raise SpecValueError("restart_mult", f"lengthens each cycle and must be >= 1, got {self.restart_mult}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


@attrs.frozen
class Recipe:
    """An ordered list of stages plus settings shared by all of them."""

    name: str
    stages: tuple[Stage, ...] = attrs.field(converter=tuple)
    description: str = ""
    task: str | None = None
    optimizer: Optimizer = attrs.field(default=Optimizer.ADAMW, converter=_enum_converter(Optimizer, "optimizer"))
    weight_decay: float = attrs.field(default=0.05, validator=_non_negative)
    momentum: float = attrs.field(default=0.9, validator=_fraction)
    batch_size: int = attrs.field(default=32, validator=_positive_int)
    max_lr: float | None = attrs.field(default=None, validator=_positive)
    label_smoothing: float = attrs.field(default=0.0, validator=_fraction)
    granularity: Granularity = attrs.field(default=Granularity.COARSE, converter=_enum_converter(Granularity, "granularity"))
    seed: int = attrs.field(default=0, validator=_whole_number)
    origin: Origin = attrs.field(default=BUILTIN, metadata=NOT_SERIALISED)

    def __attrs_post_init__(self) -> None:
        if not self.stages:
            raise SpecValueError("stages", "a recipe needs at least one stage")
        # a stage above max_lr is warned about, not refused (zoo_core.engine.recipes.recipe_warnings):
        # the guide's ceiling is advice for fine-tuning pretrained weights, and --set may overrule it

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# --- resolution results ------------------------------------------------------------------------


class LocationKind(enum.Enum):
    HF = "hf"  # a file in a Hugging Face Hub repository (HF cache layout)
    URL = "url"  # an http(s):// or file:// URL (TORCH_HOME or Zoo's store)
    LOCAL = "local"  # a file already on this machine


@attrs.frozen
class WeightsFile:
    """One file of pretrained weights and how to fetch it."""

    kind: LocationKind
    filename: str
    url: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    sha256: str | None = None  # expected digest from a catalog pin
    sha256_prefix: str | None = None  # published digest prefix (torch.hub file-name convention)


@attrs.frozen
class ResolvedModel:
    """A name resolved to a source, an architecture and (optionally) pretrained weights."""

    name: str  # canonical name, e.g. "timm:resnet50.a1_in1k"
    source: str
    architecture: str
    tag: str | None = None
    revision: str | None = None
    weights: WeightsFile | None = None
    companions: tuple[WeightsFile, ...] = ()  # files needed beside the weights (a hub config.json)
    num_classes: int | None = None  # classes of the pretrained weights
    class_names: tuple[str, ...] | None = None
    requested: str = ""  # the text the user typed
    via: str = ""  # how the name was found: "alias fast (zoo.toml)", "tier", "source timm"
    tier: TierSpec | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "requested": self.requested or self.name,
            "source": self.source,
            "architecture": self.architecture,
            "tag": self.tag,
            "revision": self.revision,
            "via": self.via,
            "pretrained": self.has_weights,
            "num_classes": self.num_classes,
        }
        if self.weights is not None:
            data["weights"] = {
                key: value.value if isinstance(value, enum.Enum) else value
                for key, value in attrs.asdict(self.weights, recurse=False).items()
                if value is not None
            }
        return data


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(item) for item in value)


@attrs.frozen
class InputConfig:
    """How images are prepared for a model: timm's data config, the part Zoo uses."""

    size: int = attrs.field(default=224, validator=_positive_int)
    channels: int = attrs.field(default=3, validator=_positive_int)
    mean: tuple[float, ...] = attrs.field(default=IMAGENET_MEAN, converter=_floats)
    std: tuple[float, ...] = attrs.field(default=IMAGENET_STD, converter=_floats)
    crop_pct: float = attrs.field(default=0.875, validator=_fraction)
    interpolation: str = "bilinear"

    def __attrs_post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise SpecValueError("std", f"has {len(self.std)} values for {len(self.mean)} means")

    @property
    def resize_size(self) -> int:
        """The shorter side an image is resized to before the centre crop: timm's ``floor(size / crop_pct)``."""
        return math.floor(self.size / self.crop_pct)

    def describe(self, augment: str = "") -> str:
        """The preparation in one line: ``resize 256 (bilinear) → centre crop 224 → normalise mean … std …``."""
        numbers = lambda values: "(" + ", ".join(f"{v:.3f}" for v in values) + ")"  # noqa: E731
        crop = augment or f"centre crop {self.size}"
        return (
            f"resize shorter side to {self.resize_size} ({self.interpolation}) → {crop} → "
            f"normalise mean {numbers(self.mean)} std {numbers(self.std)}"
        )

    def for_channels(self, channels: int) -> InputConfig:
        """The same config for ``channels`` inputs: statistics averaged when the counts differ."""
        if len(self.mean) == channels:
            return attrs.evolve(self, channels=channels)
        mean, std = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return attrs.evolve(self, channels=channels, mean=(mean,) * channels, std=(std,) * channels)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# --- chains ----------------------------------------------------------------------------------------


class ScratchStart(str, enum.Enum):
    """What a chain's comparison runs ("fresh", without transfer) start from."""

    START = "start"  # the chain's starting model, with its pretrained weights when the chain uses them
    RANDOM = "random"  # the same architecture, randomly initialised


def _step_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value or not all(ch.isalnum() or ch in "-_." for ch in value):
        raise SpecValueError(attribute.name, f"must be a non-empty name of letters, digits, '-', '_' or '.', got {value!r}")


@attrs.frozen
class ChainStep:
    """One dataset of a chain: the recipe trained on it, starting from the previous step's best weights."""

    name: str = attrs.field(validator=_step_name)
    data: str = attrs.field(validator=attrs.validators.instance_of(str))
    recipe: str | None = None  # the chain's recipe when not given
    set: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str, metadata=OMIT_EMPTY)  # KEY=VALUE overrides
    classes: tuple[str, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None else _tuple_of_str(v))
    task: str | None = None
    data_format: str | None = None
    compare_scratch: bool | None = None  # None: as the command says (--compare-scratch)


@attrs.frozen
class Chain:
    """Recipes run over datasets in order, each step starting from the previous step's best checkpoint."""

    name: str
    model: str  # the first step's starting point: a registry name or a checkpoint
    steps: tuple[ChainStep, ...] = attrs.field(converter=tuple)
    description: str = ""
    recipe: str | None = None
    task: str | None = None
    image_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_int))
    pretrained: bool = True  # whether the first step loads the starting model's pretrained weights
    scratch: ScratchStart = attrs.field(default=ScratchStart.START, converter=_enum_converter(ScratchStart, "scratch"))
    metric: str = "accuracy"  # the figure the comparison table shows
    threshold: float | None = None  # the table also shows the first epoch whose metric reaches it
    origin: Origin = attrs.field(default=BUILTIN, metadata=NOT_SERIALISED)

    def __attrs_post_init__(self) -> None:
        if not self.steps:
            raise SpecValueError("steps", "a chain needs at least one [[steps]] table")
        seen: set[str] = set()
        for index, step in enumerate(self.steps):
            if step.recipe is None and self.recipe is None:
                raise SpecValueError(f"steps[{index}].recipe", "is required when the chain names no recipe")
            if step.name in seen:
                raise SpecValueError(f"steps[{index}].name", f"'{step.name}' names two steps; give each step its own name")
            seen.add(step.name)

    def recipe_of(self, step: ChainStep) -> str:
        return step.recipe or self.recipe or ""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)
