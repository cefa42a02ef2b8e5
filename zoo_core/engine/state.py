"""The run's state, and the checkpoint that holds it: written every epoch, read back by ``--resume``.

:class:`RunState` is everything besides the weights that a resumed run needs to continue
exactly: where it stands, the best value so far, the drift baseline, early stopping's count,
the skipped steps, the metrics history. :func:`checkpoint_content` lays out one checkpoint
(the file format in the README) and :func:`restore` reads one back, RNG states included.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from ..specs import Recipe
from .ema import ModelEma
from .guards import Best
from .strategy import load_model_state, load_optimizer_state


@attrs.define
class Position:
    """Where the run stands: the next stage and epoch to run, and what is done."""

    stage: int = 0
    epoch_in_stage: int = 0
    epoch: int = 0  # epochs completed over all stages
    step: int = 0  # optimizer steps taken


@attrs.define
class RunState:
    position: Position
    best: Best
    baseline: dict[str, float] | None = None
    early_stop: dict[str, Any] | None = None
    nonfinite_skipped: int = 0
    history: list[dict[str, Any]] = attrs.field(factory=list)

    def engine_state(self) -> dict[str, Any]:
        return {
            "best": self.best.to_dict(),
            "baseline": self.baseline,
            "early_stop": self.early_stop,
            "nonfinite_skipped": self.nonfinite_skipped,
            "history": self.history,
        }


def rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@attrs.frozen
class Trained:
    """What a checkpoint saves besides the run state: the model and what trains it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    recipe: Recipe
    provenance: Mapping[str, Any]


def checkpoint_content(
    state: RunState,
    trained: Trained,
    metrics: Mapping[str, Any],
    *,
    weights: nn.Module | None = None,
    full: bool = True,
    gathered: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One checkpoint: ``weights`` (the model, or its EMA for ``best.pt``) and, when ``full``, all resume needs.

    ``gathered`` is the model's and optimizer's full state when the model is sharded (gathered
    by every process beforehand, see :mod:`.strategy`).
    """
    position = state.position
    source = weights or trained.model
    content: dict[str, Any] = {
        "model_state_dict": dict(gathered[0]) if gathered is not None and source is trained.model else source.state_dict(),
        "epoch": position.epoch,
        "stage": position.stage,
        "epoch_in_stage": position.epoch_in_stage,
        "step": position.step,
        "val_loss": metrics.get("val_loss"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool, list))},
        "recipe": trained.recipe.to_dict(),
        "frozen_layers": [name for name, param in trained.model.named_parameters() if not param.requires_grad],
        "provenance": {**trained.provenance, "weights": "ema" if source is not trained.model else "model"},
    }
    if full:
        content.update(
            optimizer_state_dict=dict(gathered[1]) if gathered is not None else trained.optimizer.state_dict(),
            scheduler_state_dict={"stage": position.stage, "epoch_in_stage": position.epoch_in_stage, "step": position.step},
            scaler_state_dict=trained.scaler.state_dict(),
            ema_state_dict=trained.ema.state_dict() if trained.ema is not None else None,
            rng_states=rng_states(),
            sampler_epoch=position.epoch,
            engine_state=state.engine_state(),
        )
    return content


def restore(content: Mapping[str, Any], trained: Trained) -> tuple[RunState, ModelEma | None]:
    """Load a full checkpoint into the model, optimizer and scaler; return the run state and EMA."""
    load_model_state(trained.model, content["model_state_dict"])
    load_optimizer_state(trained.model, trained.optimizer, content["optimizer_state_dict"])
    trained.scaler.load_state_dict(content["scaler_state_dict"])
    ema = None
    if content.get("ema_state_dict"):
        ema_state = content["ema_state_dict"]
        ema = ModelEma(trained.model, ema_state["decay"])
        ema.load_state_dict(ema_state)
    engine_state = content["engine_state"]
    state = RunState(
        position=Position(content["stage"], content["epoch_in_stage"], content["epoch"], content["step"]),
        best=Best.from_dict(engine_state["best"]),
        baseline=engine_state["baseline"],
        early_stop=engine_state["early_stop"],
        nonfinite_skipped=engine_state["nonfinite_skipped"],
        history=list(engine_state["history"]),
    )
    restore_rng_states(content["rng_states"])
    return state, ema
