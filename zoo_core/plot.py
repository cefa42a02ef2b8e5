"""Learning curves of one or more runs, with stage boundaries marked (needs matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ZooError


def read_history(run_dir: Path) -> list[dict]:
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise ZooError(f"{run_dir}: no metrics.jsonl; is this a run folder written by `zoo finetune`?")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ZooError("plotting needs matplotlib: pip install 'zoo[plot]' (or pip install matplotlib)") from None
    return plt


def plot_confusion(evaluation: Path, output: Path) -> Path:
    """The confusion matrix of a ``zoo eval --json`` result as a picture: counts, rows the true classes."""
    try:
        matrix = json.loads(evaluation.read_text())["confusion_matrix"]
        classes, counts = matrix["classes"], matrix["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ZooError(f"{evaluation}: not the JSON of `zoo eval --json` with a confusion matrix; write one with zoo eval CKPT --data DIR --json > FILE") from None
    plt = _pyplot()
    side = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(side, side))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    largest = max((max(row) for row in counts), default=0)
    for row_index, row in enumerate(counts):
        for column, count in enumerate(row):
            axis.text(column, row_index, str(count), ha="center", va="center", color="white" if count > largest / 2 else "black")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def plot_runs(run_dirs: Sequence[Path], output: Path, labels: Sequence[str] | None = None) -> Path:
    """Loss (left) and the first metric found (right) per epoch; dotted lines mark stage changes."""
    plt = _pyplot()
    histories = [read_history(Path(path)) for path in run_dirs]
    labels = list(labels) if labels else [Path(path).name for path in run_dirs]
    metric = next((key for key in ("accuracy", "map", "f1_macro", "top5") if histories and key in histories[0][0]), None)
    drift = sorted({key for row in histories[0] for key in row if key.startswith("drift/")}) if histories else []
    panels = 1 + bool(metric) + bool(drift)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    loss_axis = axes[0][0]
    for history, label in zip(histories, labels):
        epochs = [row["epoch"] for row in history]
        line = loss_axis.plot(epochs, [row["val_loss"] for row in history], label=f"{label} val")[0]
        loss_axis.plot(epochs, [row["train_loss"] for row in history], linestyle="--", color=line.get_color(), alpha=0.6, label=f"{label} train")
        if metric:
            axes[0][1].plot(epochs, [row[metric] for row in history], color=line.get_color(), label=label)
        for previous, row in zip(history, history[1:]):
            if row["stage"] != previous["stage"]:
                for axis in axes[0]:
                    axis.axvline(row["epoch"] - 0.5, color=line.get_color(), linestyle=":", alpha=0.5)
    if drift:
        _plot_drift(axes[0][-1], Path(run_dirs[0]), histories[0], drift, labels[0])
    from matplotlib.ticker import MaxNLocator

    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend(fontsize=8)
    if metric:
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_ylabel(f"val {metric}")
        axes[0][1].legend(fontsize=8)
    figure.suptitle("dotted lines: stage boundaries")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def _plot_drift(axis: object, run_dir: Path, history: list[dict], names: Sequence[str], label: str) -> None:
    """Each validation loss component over its value before training (``drift/…``), with the
    drift guard's band shaded over the epochs of the stages that watch it (the first run's)."""
    epochs = [row["epoch"] for row in history]
    for name in names:
        axis.plot(epochs, [row.get(name) for row in history], label=name.removeprefix("drift/"))
    recipe = json.loads((run_dir / "recipe.json").read_text()) if (run_dir / "recipe.json").is_file() else {}
    for index, stage in enumerate(recipe.get("stages", [])):
        guard = stage.get("drift_guard")
        watched = [row["epoch"] for row in history if row["stage"] == index]
        if guard and watched:
            band = float(guard.get("band", 0.2))
            low = 1 - band if guard.get("watch") == "both" else 0.0
            axis.fill_between(
                [min(watched) - 0.5, max(watched) + 0.5], low, 1 + band, color="green", alpha=0.12, linewidth=0
            )
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("epoch")
    axis.set_ylabel("val loss / before training")
    axis.set_title(f"{label}: loss components (shaded: drift band)", fontsize=9)
    axis.legend(fontsize=7)


def gradient_groups(history: Sequence[dict], order: Sequence[str] = ()) -> list[str]:
    """The groups with gradient figures in a run's metrics: in ``order`` (the model's, from
    ``groups.json``), then any other in the order they first appear."""
    seen: dict[str, None] = {}
    for row in history:
        for key in row:
            if key.startswith("grad_norm/"):
                seen.setdefault(key.removeprefix("grad_norm/"), None)
    return [name for name in order if name in seen] + [name for name in seen if name not in order]


def plot_gradients(run_dir: Path, output: Path) -> Path:
    """Each group's gradient norm (mean over the epoch's steps; the dashed line its largest) and
    update-to-weight ratio per epoch, on a log scale, stage boundaries marked. A frozen group has no
    point in the epochs it is frozen, so a gap is a group that stood still as it should."""
    history = read_history(Path(run_dir))
    listed = Path(run_dir) / "groups.json"
    order = [group["name"] for group in json.loads(listed.read_text())] if listed.is_file() else []
    groups = gradient_groups(history, order)
    if not groups:
        raise ZooError(f"{run_dir}: its metrics.jsonl has no gradient figures; they are written by `zoo finetune` unless --no-gradient-flow")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    figure, (norm_axis, ratio_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, group in enumerate(groups):
        colour = colours[index % len(colours)]
        points = [(row["epoch"], row) for row in history if f"grad_norm/{group}" in row]
        epochs = [epoch for epoch, _ in points]
        positive = lambda values: [value if value and value > 0 else float("nan") for value in values]  # noqa: E731 (log scale)
        norm_axis.plot(epochs, positive([row[f"grad_norm/{group}"] for _, row in points]), marker="o", markersize=3, color=colour, label=group)
        norm_axis.plot(epochs, positive([row.get(f"grad_norm_max/{group}") for _, row in points]), linestyle="--", color=colour, alpha=0.4)
        ratio_axis.plot(epochs, positive([row.get(f"update_ratio/{group}") for _, row in points]), marker="o", markersize=3, color=colour, label=group)
        for axis, key in ((norm_axis, "grad_norm"), (ratio_axis, "update_ratio")):  # zero has no place on a log scale: an x at the bottom
            zero = [epoch for epoch, row in points if row.get(f"{key}/{group}") == 0]
            if zero:
                axis.plot(zero, [0.03] * len(zero), marker="x", linestyle="none", color=colour, label=f"{group}: zero",
                          transform=blended_transform_factory(axis.transData, axis.transAxes))  # fmt: skip
    for previous, row in zip(history, history[1:]):
        if row["stage"] != previous["stage"]:
            for axis in (norm_axis, ratio_axis):
                axis.axvline(row["epoch"] - 0.5, color="grey", linestyle=":")
                axis.text(row["epoch"] - 0.45, 1.0, f"stage {row['stage']}", transform=axis.get_xaxis_transform(), fontsize=7, va="top")
    for axis, label in ((norm_axis, "gradient norm (dashed: largest step)"), (ratio_axis, "update ratio ‖Δw‖ / ‖w‖ over the epoch")):
        axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=7)
    figure.suptitle(f"{Path(run_dir).name}: gradient flow per layer group (dotted lines: stage boundaries; no point: frozen)", fontsize=9)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
