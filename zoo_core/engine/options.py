"""What a user chooses about a run, checked once, and what hooks are told about it.

:class:`RunOptions` is the one object ``zoo finetune``'s flags, :func:`zoo_core.finetune`'s
keyword arguments, the pre-launch checks and the Engine share, instead of repeating a
parameter list at every layer. Its validators refuse values that make no sense before any
file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from ..errors import RunError
from ..sizes import parse_size
from ..specs import Recipe
from .strategy import Strategy
from .task import MIN_IMAGE_SIZE


def _at_least(minimum: int, unit: str = ""):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise RunError(f"{attribute.name} must be a whole number of at least {minimum}{unit}, got {value!r}")

    return check


def _fraction_between(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise RunError(f"--val-fraction must be between 0 and 1, got {value}")


KEPT_CHECKPOINTS = ("last", "best", "stages")
DEFAULT_KEEP = frozenset({"last", "best"})


def _keep(value: Any) -> frozenset[str]:
    """``--keep last,best,stages`` (a comma-separated string or names) as a set, every name checked."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in KEPT_CHECKPOINTS]
    if unknown or not names:
        raise RunError(f"--keep takes some of {', '.join(KEPT_CHECKPOINTS)} separated by commas (e.g. last,best), got {value!r}")
    return frozenset(names)


def _size(value: Any, flag: str) -> int | None:
    return None if value is None else parse_size(value, what=flag)


def _path_or_none(value: Any) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen
class RunOptions:
    """One fine-tuning run as the user asked for it (see ``zoo finetune --help``)."""

    recipe: str
    model: str
    data: Path = attrs.field(converter=Path)
    task: str | None = None
    run_dir: Path | None = attrs.field(default=None, converter=_path_or_none)
    resume: bool = False
    overrides: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    pretrained: bool = True
    image_size: int | None = attrs.field(default=None, validator=_at_least(MIN_IMAGE_SIZE, " pixels"))
    in_chans: int | None = attrs.field(default=None, validator=_at_least(1))
    val_fraction: float = attrs.field(default=0.2, validator=_fraction_between)
    workers: int | None = attrs.field(default=None, validator=_at_least(0))  # None: from the CPU count (loading.default_workers)
    device: str | None = None
    compile_backend: str | None = None
    use_cache: bool = True
    seed: int | None = None
    detector: str | None = None  # a detector tier for --task detection: NAME+detector/DETECTOR
    classes: tuple[str, ...] | None = attrs.field(default=None, converter=lambda value: None if value is None else tuple(value))
    data_format: str | None = None  # a dataset reader's name (--data-format); None: recognised from the data
    # bytes; 0: off; None: on when the decoded data fits within setup.AUTO_IMAGE_CACHE, else off
    cache_images: int | None = attrs.field(default=None, converter=lambda value: None if value in (None, "auto") else _size(value, "--cache-images"))
    cache_budget: int | None = attrs.field(default=None, converter=lambda value: _size(value, "--cache-budget"))  # None: default_budget
    strategy: Strategy = attrs.field(default=Strategy.DDP, converter=Strategy)  # how several processes hold the model
    keep: frozenset[str] = attrs.field(default=DEFAULT_KEEP, converter=_keep)  # the checkpoints that stay (--keep)
    gradient_flow: bool = True  # per-group gradient figures and the frozen/trainable checks (gradflow)
    strict_groups: bool = False  # a trainable group that does not learn is an error, not a warning

    @classmethod
    def of(cls, recipe: str, model: str, data: str | Path, **choices: Any) -> RunOptions:
        """From :func:`zoo_core.finetune`'s arguments; an unknown keyword is a ``TypeError`` as usual."""
        return cls(recipe=recipe, model=model, data=data, **choices)

    @property
    def model_options(self) -> dict[str, Any]:
        """Constructor arguments for the model (``in_chans``)."""
        return {"in_chans": self.in_chans} if self.in_chans is not None else {}


@attrs.frozen
class RunInfo:
    """What hooks learn about the run."""

    run_dir: Path
    recipe: Recipe
    model: str
    task: str
    rank: int
    world_size: int

