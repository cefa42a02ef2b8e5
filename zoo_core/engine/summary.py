"""What a run says before and while it trains: the summary block, the first epoch's estimate, ETAs.

The summary (logged once by rank 0, before the first step) names the data found (the task
describes it: images per class and split), the model and where its weights come from, each
stage in one line, the device and precision, and the input preparation. During the run, the
first steps give an estimate of the first epoch, and every epoch's line ends with the time
left in its stage and in the run, from the epochs timed so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..specs import Recipe

FIRST_STEPS_TIMED = 5  # steps of the first epoch timed before its length is estimated


def duration(seconds: float) -> str:
    """``45s``, ``3m 05s``, ``2h 10m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def weights_line(provenance: Mapping[str, Any]) -> str:
    """Where the starting weights come from, in a few words."""
    parent = provenance.get("parent")
    if parent:
        return f"from checkpoint {parent.get('path')} (sha256 {str(parent.get('sha256', ''))[:12]})"
    if provenance.get("weights_sha256"):
        revision = f"@{provenance['revision']}" if provenance.get("revision") else ""
        return f"pretrained {provenance.get('base_model')}{revision} (sha256 {provenance['weights_sha256'][:12]})"
    return "random initialisation (--no-pretrained, or no pretrained weights)"


def stage_lines(recipe: Recipe, trainable: Sequence[Sequence[str]]) -> list[str]:
    """One line per stage: epochs, what trains (at its first epoch), learning rate, augmentation."""
    lines = []
    for index, (stage, groups) in enumerate(zip(recipe.stages, trainable)):
        augment = ", ".join(f"{key}={value}" for key, value in stage.augment.items()) or "none"
        extra = [f"ema {stage.ema:g}"] if stage.ema else []
        extra += ["early stop"] if stage.early_stop else []
        extra += ["drift guard"] if stage.drift_guard else []
        lr = stage.lr if isinstance(stage.lr, (int, float)) else "per group"
        lines.append(
            f"  {index} {stage.name or 'stage'}: {stage.epochs} epochs, trains {', '.join(groups) or 'nothing'}, lr {lr}, "
            f"augment {augment}" + (f", {', '.join(extra)}" if extra else "")
        )
    return lines


def summary_block(
    *,
    data_lines: Sequence[str],
    model: str,
    provenance: Mapping[str, Any],
    recipe: Recipe,
    trainable: Sequence[Sequence[str]],
    device: Mapping[str, Any],
    world_size: int,
    inputs: str,
    run_dir: str,
) -> str:
    precision = f"{device['amp']} autocast" if device.get("amp") else "fp32"
    layout = ", channels-last" if device.get("channels_last") else ""
    processes = f", {world_size} processes" if world_size > 1 else ""
    lines = [
        f"run {run_dir}",
        *data_lines,
        f"model   {model}: {weights_line(provenance)}",
        f"recipe  {recipe.name}: {len(recipe.stages)} stage{'s' if len(recipe.stages) != 1 else ''}, batch {recipe.batch_size}",
        *stage_lines(recipe, trainable),
        f"device  {device['device']}, {precision}{layout}{processes}",
        f"inputs  {inputs}",
    ]
    return "\n".join(lines)


class Eta:
    """The time left in a stage and in the run, from the mean of the epochs timed so far."""

    def __init__(self, recipe: Recipe) -> None:
        self.epochs = [stage.epochs for stage in recipe.stages]
        self.seconds: list[float] = []

    def after(self, stage_index: int, epoch_in_stage: int, seconds: float) -> str:
        self.seconds.append(seconds)
        mean = sum(self.seconds) / len(self.seconds)
        in_stage = self.epochs[stage_index] - epoch_in_stage - 1
        in_run = in_stage + sum(self.epochs[stage_index + 1 :])
        if in_run == 0:
            return "last epoch"
        return f"ETA stage {duration(in_stage * mean)}, run {duration(in_run * mean)}"
