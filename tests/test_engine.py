"""The fine-tune engine: stage schedules, checkpoints, the run folder, evaluation, transfer from a
checkpoint, engine-event hooks, early stopping, the drift guard, EMA, gradient clipping and
batch augmentation.

Runs use timm's ``test_resnet`` (or ``maxsight/t2`` where a neck matters) at 32 px on a few
dozen 16 px images, so each takes seconds. Runs that several tests read are made once per
module, in a workspace of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_image_folder

import zoo_core

MODEL = "timm:test_resnet"
CLASSES = ("bird", "cat", "dog")
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8")


# --- helpers -----------------------------------------------------------------------------------------


def write_named_folder(root: Path, names: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """An image folder (train/ and val/) whose class folders carry ``names``."""
    write_image_folder(root, classes=len(names), per_class=8, seed=seed)
    for part in ("train", "val"):
        for index, name in enumerate(names):
            (root / part / f"class{index}").rename(root / part / name)
    return root


def rotate_val_labels(root: Path) -> Path:
    """Give each validation class folder the next class's name: learning makes val_loss rise."""
    val = root / "val"
    names = sorted(p.name for p in val.iterdir())
    for name in names:
        (val / name).rename(val / f"_{name}")
    for index, name in enumerate(names):
        (val / f"_{name}").rename(val / names[(index + 1) % len(names)])
    return root


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def groups_of(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "groups.json").read_text())


def names_by_role(run_dir: Path, *roles: str) -> set[str]:
    return {group["name"] for group in groups_of(run_dir) if group["role"] in roles}


def run_api(recipe: str, model: str, data: Path, run_dir: Path, *overrides: str, **kwargs: Any) -> Any:
    from zoo_core.engine.api import finetune

    return finetune(
        recipe,
        model,
        data,
        run_dir=run_dir,
        overrides=["batch_size=8", *overrides],
        pretrained=False,
        image_size=32,
        **{"keep": ("last", "best", "stages"), **kwargs},  # these tests read the stage checkpoints too
    )


def write_recipe(text: str) -> None:
    Path("zoo.toml").write_text(text)


@pytest.fixture(scope="module")
def named_data(workspace: Path) -> Path:
    return write_named_folder(workspace / "data")


@pytest.fixture(scope="module")
def mgd_run(workspace: Path, named_data: Path) -> Path:
    """multigriddet-full, two epochs per stage."""
    run_api("multigriddet-full", MODEL, named_data, workspace / "mgd", "stages.*.epochs=2")
    return workspace / "mgd"


@pytest.fixture(scope="module")
def probe_run(workspace: Path, named_data: Path) -> Path:
    """linear-probe for two epochs: heads only, over cached trunk features."""
    run_api("linear-probe", MODEL, named_data, workspace / "probe", "stages.*.epochs=2")
    return workspace / "probe"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_named_folder(tmp_path / "data")


# --- the stage schedule, epoch by epoch -----------------------------------------------------------------


def test_multigriddet_full_trains_heads_then_all_but_backbone_then_everything(mgd_run):
    heads = names_by_role(mgd_run, "head")
    not_backbone = names_by_role(mgd_run, "head", "neck")
    everything = names_by_role(mgd_run, "head", "neck", "backbone")
    rows = read_rows(mgd_run)
    assert [(row["stage"], set(row["trainable"])) for row in rows] == [
        (0, heads), (0, heads), (1, not_backbone), (1, not_backbone), (2, everything), (2, everything),
    ]  # fmt: skip


def test_multigriddet_full_learning_rates_per_stage_and_zero_for_frozen_groups(mgd_run):
    rows = read_rows(mgd_run)
    for row, rate in zip(rows, (1e-4, 1e-4, 5e-5, 5e-5, 3e-5, 3e-5), strict=True):
        expected = {group["name"]: (rate if group["name"] in row["trainable"] else 0.0) for group in groups_of(mgd_run)}
        assert {key.removeprefix("lr/"): value for key, value in row.items() if key.startswith("lr/")} == expected


def test_rates_follow_warmup_and_cosine_within_each_stage(mgd_run):
    rows = read_rows(mgd_run)
    head = next(iter(names_by_role(mgd_run, "head")))
    for first, second in (rows[0:2], rows[2:4], rows[4:6]):
        assert 0 < second[f"lr_now/{head}"] < first[f"lr_now/{head}"] <= first[f"lr/{head}"]


def test_multigriddet_full_trains_the_neck_from_its_second_stage(workspace, named_data):
    run_dir = workspace / "mgd-neck"
    run_api("multigriddet-full", "maxsight/t2", named_data, run_dir, "stages.*.epochs=1")
    backbone, neck, heads = (names_by_role(run_dir, role) for role in ("backbone", "neck", "head"))
    assert neck == {"neck"}
    assert [set(row["trainable"]) for row in read_rows(run_dir)] == [heads, heads | neck, heads | neck | backbone]


def test_lightweight_3stage_on_a_model_with_a_neck(workspace, named_data):
    run_dir = workspace / "lightweight"
    run_api("lightweight-3stage", "maxsight/t2", named_data, run_dir, "stages.*.epochs=1")
    backbone, neck, heads = (names_by_role(run_dir, role) for role in ("backbone", "neck", "head"))
    assert neck == {"neck"} and heads == {"heads.classifier", "heads.distance"}

    def rates(row: dict[str, Any]) -> dict[str, float]:
        return {key.removeprefix("lr/"): value for key, value in row.items() if key.startswith("lr/")}

    first, second, third = read_rows(run_dir)
    assert set(first["trainable"]) == heads
    assert rates(first) == {**dict.fromkeys(backbone | neck, 0.0), **dict.fromkeys(heads, 2e-3)}
    assert set(second["trainable"]) == heads | neck
    assert rates(second) == {**dict.fromkeys(backbone, 0.0), "neck": 2e-4, **dict.fromkeys(heads, 1e-3)}
    assert set(third["trainable"]) == heads | neck | backbone
    assert rates(third) == {**dict.fromkeys(backbone, 2e-5), "neck": 1e-4, **dict.fromkeys(heads, 2e-4)}


def test_ulmfit_gradual_unfreezes_one_more_group_each_epoch_with_rates_decaying_2_6(workspace, named_data):
    run_dir = workspace / "ulmfit"
    run_api("ulmfit-gradual", MODEL, named_data, run_dir, "stages.0.epochs=4")
    order = [group["name"] for group in groups_of(run_dir)]  # input to output; the head is last
    assert groups_of(run_dir)[-1]["role"] == "head"
    for epoch, row in enumerate(read_rows(run_dir)):
        unfrozen = order[len(order) - 1 - epoch :]
        assert row["trainable"] == unfrozen
        for distance, name in enumerate(reversed(order)):
            expected = 1e-3 / 2.6**distance if name in unfrozen else 0.0
            assert row[f"lr/{name}"] == pytest.approx(expected, rel=1e-12), (epoch, name)


# --- checkpoints, metrics and the run folder --------------------------------------------------------------


def test_run_writes_last_best_and_one_checkpoint_per_stage(mgd_run):
    names = sorted(path.name for path in (mgd_run / "checkpoints").iterdir())
    assert {"last.pt", "best.pt", "stage-0-heads.pt", "stage-1-neck.pt", "stage-2-all.pt"} <= set(names)
    assert not [name for name in names if name.endswith(".tmp") or name.startswith(".")]


def test_stage_checkpoints_hold_the_end_of_their_stage(mgd_run):
    last_epochs = {}
    for index, name in enumerate(("heads", "neck", "all")):
        checkpoint = load(mgd_run / "checkpoints" / f"stage-{index}-{name}.pt")
        last_epochs[index] = (checkpoint["metrics"]["stage"], checkpoint["metrics"]["epoch"])
    assert last_epochs == {0: (0, 2), 1: (1, 4), 2: (2, 6)}  # epochs count from 1
    final, last = load(mgd_run / "checkpoints" / "stage-2-all.pt"), load(mgd_run / "checkpoints" / "last.pt")
    assert all(torch.equal(final["model_state_dict"][key], value) for key, value in last["model_state_dict"].items())


def test_best_checkpoint_is_the_epoch_with_the_lowest_val_loss(mgd_run):
    rows = read_rows(mgd_run)
    best_row = min(rows, key=lambda row: row["val_loss"])
    best = load(mgd_run / "checkpoints" / "best.pt")
    assert best["val_loss"] == best_row["val_loss"]
    assert best["metrics"]["epoch"] == best_row["epoch"]


def test_last_checkpoint_holds_everything_resume_needs(mgd_run):
    last = load(mgd_run / "checkpoints" / "last.pt")
    for key in (
        "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "rng_states",
        "epoch", "stage", "step", "val_loss", "metrics", "recipe", "frozen_layers", "provenance", "sampler_epoch",
    ):  # fmt: skip
        assert key in last, key
    assert {"python", "numpy", "torch"} <= set(last["rng_states"])
    assert last["recipe"]["name"] == "multigriddet-full"
    assert last["step"] == read_rows(mgd_run)[-1]["step"] == 6 * 3  # six epochs of three batches


def test_metrics_jsonl_has_one_row_per_epoch(mgd_run):
    rows = read_rows(mgd_run)
    assert [(row["epoch"], row["stage"], row["epoch_in_stage"]) for row in rows] == [
        (1, 0, 0), (2, 0, 1), (3, 1, 0), (4, 1, 1), (5, 2, 0), (6, 2, 1),
    ]  # fmt: skip
    for row in rows:
        assert {"train_loss", "val_loss", "accuracy", "f1_macro", "trainable", "cached", "step"} <= set(row)
        assert "top5" not in row  # three classes: top-5 would always be 1


def test_run_folder_records_run_recipe_provenance_and_groups(mgd_run, named_data):
    assert {"run.json", "recipe.json", "provenance.json", "groups.json", "metrics.jsonl", "checkpoints"} <= {
        path.name for path in mgd_run.iterdir()
    }
    record = json.loads((mgd_run / "run.json").read_text())
    assert (record["model"], record["task"], record["classes"], record["seed"]) == (
        MODEL,
        "classification",
        list(CLASSES),
        0,
    )
    assert record["data"] == str(named_data.resolve())
    recipe = json.loads((mgd_run / "recipe.json").read_text())
    assert recipe == record["recipe"]
    assert [stage["epochs"] for stage in recipe["stages"]] == [2, 2, 2]  # the --set overrides, resolved
    provenance = json.loads((mgd_run / "provenance.json").read_text())
    assert provenance["model"].startswith(MODEL) and provenance["class_names"] == list(CLASSES)
    groups = {group["name"] for group in groups_of(mgd_run)}
    assert groups == {key.removeprefix("lr/") for key in read_rows(mgd_run)[0] if key.startswith("lr/")}


@pytest.mark.parametrize("run", ["mgd_run", "probe_run"])
def test_best_checkpoint_loads_weights_only_and_evaluates_to_the_reported_metrics(zoo, request, run, named_data):
    run_dir = request.getfixturevalue(run)
    best = load(run_dir / "checkpoints" / "best.pt")  # weights_only=True: plain tensors and containers
    row = next(row for row in read_rows(run_dir) if row["epoch"] == best["metrics"]["epoch"])
    result = zoo("eval", run_dir / "checkpoints" / "best.pt", "--data", named_data, "--json")
    assert result.code == 0, result
    metrics = json.loads(result.out)
    assert {key: metrics[key] for key in ("val_loss", "accuracy", "f1_macro")} == {
        key: row[key] for key in ("val_loss", "accuracy", "f1_macro")
    }


def test_checkpoints_record_the_class_names(mgd_run):
    for name in ("best.pt", "last.pt", "stage-0-heads.pt"):
        provenance = load(mgd_run / "checkpoints" / name)["provenance"]
        assert provenance["class_names"] == list(CLASSES), name
        assert provenance["num_classes"] == 3


def test_eval_on_data_with_other_classes_is_refused(zoo, mgd_run, tmp_path):
    other = write_named_folder(tmp_path / "other", names=("ant", "bee", "cow"))
    result = zoo("eval", mgd_run / "checkpoints" / "best.pt", "--data", other)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"zoo: error: {other}: classes ant, bee, cow differ from the checkpoint's bird, cat, dog; "
        "evaluate on data with the same class folders"
    ]


# --- --model as a checkpoint: carried in through a transfer plan --------------------------------------------


@pytest.mark.parametrize("prefix", ["", "file:"], ids=["path", "file-name"])
def test_model_from_a_checkpoint_is_carried_in_by_a_printed_and_saved_transfer_plan(zoo, mgd_run, tmp_path, prefix):
    source = mgd_run / "checkpoints" / "best.pt"
    data = write_named_folder(tmp_path / "more", names=(*CLASSES, "eel"), seed=1)
    result = zoo(
        "finetune", "--recipe", "linear-probe", "--model", f"{prefix}{source}", "--data", data, "--run-dir", "run",
        *FAST, "--set", "stages.0.epochs=1",
    )  # fmt: skip
    assert result.code == 0, result
    assert "remap-classes" in result.out and "3 of 4 classes by name" in result.out
    transfer = json.loads(Path("run/transfer.json").read_text())
    assert transfer["counts"]["remap-classes"] == 2 and transfer["counts"]["new"] == 0
    provenance = load(Path("run/checkpoints/last.pt"))["provenance"]
    assert provenance["transfer"] == transfer
    assert Path(provenance["parent"]["path"]).resolve() == source.resolve()
    assert provenance["class_names"] == [*CLASSES, "eel"]


# --- engine-event hooks -----------------------------------------------------------------------------------

TWO_PROBES = """
[recipes.two-probes]
batch_size = 8
[[recipes.two-probes.stages]]
name = "first"
epochs = 2
freeze = 2
lr = 1e-3
[[recipes.two-probes.stages]]
name = "second"
epochs = 1
freeze = 2
lr = 5e-4
"""


class Recorder:
    """A throwaway plugin that records every engine event with its arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    @zoo_core.hookimpl
    def zoo_on_stage_start(self, run, stage_index, stage):
        self.events.append(("stage_start", {"run": run, "stage_index": stage_index, "stage": stage}))

    @zoo_core.hookimpl
    def zoo_on_epoch_end(self, run, epoch, metrics):
        self.events.append(("epoch_end", {"run": run, "epoch": epoch, "metrics": json.loads(json.dumps(metrics))}))

    @zoo_core.hookimpl
    def zoo_on_stage_end(self, run, stage_index, stage, metrics):
        self.events.append(
            ("stage_end", {"run": run, "stage_index": stage_index, "stage": stage, "metrics": dict(metrics)})
        )

    @zoo_core.hookimpl
    def zoo_on_checkpoint_saved(self, run, path, kind):
        self.events.append(
            ("checkpoint_saved", {"run": run, "path": path, "kind": kind, "exists": Path(path).is_file()})
        )


@pytest.fixture(scope="module")
def recorded(workspace, named_data) -> tuple[Recorder, Path, Any]:
    """A two-stage run with the Recorder plugin (a fresh plugin manager, as ``make_registry`` builds)."""
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import PluginHost
    from zoo_core.registry import Registry

    catalog = workspace / "two-probes.toml"
    catalog.write_text(TWO_PROBES)
    host = PluginHost()
    host.load_entry_points()
    recorder = Recorder()
    host.register(recorder, name="recorder")
    registry = Registry(host, load_catalog([catalog]))
    run_api("two-probes", MODEL, named_data, workspace / "recorded", registry=registry)
    return recorder, workspace / "recorded", registry.recipe("two-probes")


def test_engine_events_arrive_in_order(recorded):
    recorder, _, _ = recorded
    sequence = [
        (name, args.get("stage_index", args.get("epoch", args.get("kind"))))
        for name, args in recorder.events
        if args.get("kind") != "best"
    ]
    assert sequence == [
        ("stage_start", 0),
        ("checkpoint_saved", "last"), ("epoch_end", 0),
        ("checkpoint_saved", "stage"), ("checkpoint_saved", "last"), ("epoch_end", 1), ("stage_end", 0),
        ("stage_start", 1),
        ("checkpoint_saved", "stage"), ("checkpoint_saved", "last"), ("epoch_end", 2), ("stage_end", 1),
    ]  # fmt: skip  -- last.pt is always the last write of an epoch: see test_kill_between_writes.py


def test_engine_events_carry_the_run_description(recorded):
    recorder, run_dir, recipe = recorded
    for _, args in recorder.events:
        run = args["run"]
        assert (Path(run.run_dir), run.recipe.name, run.recipe.stages) == (run_dir, "two-probes", recipe.stages)
        assert (run.model, run.task, run.rank, run.world_size) == (MODEL, "classification", 0, 1)


def test_stage_events_carry_the_stage_and_its_last_metrics(recorded):
    recorder, run_dir, recipe = recorded
    rows = read_rows(run_dir)
    starts = [args for name, args in recorder.events if name == "stage_start"]
    ends = [args for name, args in recorder.events if name == "stage_end"]
    assert [(args["stage_index"], args["stage"]) for args in starts] == list(enumerate(recipe.stages))
    assert [(args["stage_index"], args["stage"]) for args in ends] == list(enumerate(recipe.stages))
    assert [json.loads(json.dumps(args["metrics"])) for args in ends] == [rows[1], rows[2]]


def test_epoch_end_event_carries_the_metrics_row(recorded):
    recorder, run_dir, _ = recorded
    assert [(args["epoch"], args["metrics"]) for name, args in recorder.events if name == "epoch_end"] == [
        (row["epoch"] - 1, row) for row in read_rows(run_dir)  # the hook's epoch index is from 0, the rows' from 1
    ]


def test_checkpoint_saved_event_names_a_written_file_and_its_kind(recorded):
    recorder, run_dir, _ = recorded
    saved = [args for name, args in recorder.events if name == "checkpoint_saved"]
    assert all(args["exists"] for args in saved)
    paths = {(args["kind"], Path(args["path"]).name) for args in saved}
    assert paths == {
        ("last", "last.pt"),
        ("best", "best.pt"),
        ("stage", "stage-0-first.pt"),
        ("stage", "stage-1-second.pt"),
    }
    # "best" follows an improvement of val_loss, and only then
    best_epochs = []
    for index, (name, args) in enumerate(recorder.events):
        if name == "checkpoint_saved" and args["kind"] == "best":
            best_epochs.append(next(a["epoch"] for n, a in recorder.events[index:] if n == "epoch_end"))
    losses = [row["val_loss"] for row in read_rows(run_dir)]
    assert best_epochs == [
        epoch for epoch, loss in enumerate(losses) if loss < min(losses[:epoch], default=float("inf"))
    ]


# --- guards that end a stage or a run ---------------------------------------------------------------------

EARLY_STOP = """
[recipes.stop-early]
batch_size = 8
[[recipes.stop-early.stages]]
name = "patient"
epochs = 5
freeze = 2
lr = 1e-3
early_stop = { monitor = "val_loss", mode = "min", patience = 1, min_delta = 100.0 }
[[recipes.stop-early.stages]]
name = "after"
epochs = 1
freeze = 2
lr = 1e-3
"""


def test_early_stopping_ends_the_stage_and_the_next_stage_runs(data, tmp_path):
    write_recipe(EARLY_STOP)
    run_api("stop-early", MODEL, data, tmp_path / "run")
    rows = read_rows(tmp_path / "run")
    # patience 1 with an improvement threshold nothing reaches: the second epoch ends the stage
    assert [(row["stage"], row["epoch_in_stage"]) for row in rows] == [(0, 0), (0, 1), (1, 0)]
    assert (tmp_path / "run" / "checkpoints" / "stage-0-patient.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "stage-1-after.pt").is_file()


DRIFT = """
[recipes.drifty]
batch_size = 8
[[recipes.drifty.stages]]
name = "guarded"
epochs = 2
freeze = 2
lr = {lr}
drift_guard = {{ band = 0.2, action = "{action}" }}
[[recipes.drifty.stages]]
name = "later"
epochs = 1
freeze = 2
lr = 1e-3
"""


def test_drift_guard_stop_ends_the_run_when_val_loss_leaves_the_band(zoo, data):
    write_recipe(DRIFT.format(lr=0.3, action="stop"))
    result = zoo(
        "finetune", "--recipe", "drifty", "--model", MODEL, "--data", rotate_val_labels(data), "--run-dir", "run", *FAST,
        "--keep", "last,best,stages",
    )
    assert "stopped: drift guard in stage 0" in result.out
    assert "stage 0 epoch 1: drift guard (+20%): val_loss" in result.err
    assert [(row["stage"], row["epoch_in_stage"]) for row in read_rows(Path("run"))] == [(0, 0)]
    assert (Path("run") / "checkpoints" / "stage-0-guarded.pt").is_file()  # the stopped stage's end is kept
    assert not (Path("run") / "checkpoints" / "stage-1-later.pt").exists()
    assert (Path("run") / "checkpoints" / "last.pt").is_file()


def test_drift_guard_warn_reports_and_the_run_goes_on(zoo, data):
    write_recipe(DRIFT.format(lr=0.3, action="warn"))
    result = zoo(
        "finetune", "--recipe", "drifty", "--model", MODEL, "--data", rotate_val_labels(data), "--run-dir", "run", *FAST
    )
    assert result.code == 0, result
    warnings = [line for line in result.err.splitlines() if "drift guard" in line and line.startswith("zoo: WARNING")]
    assert len(warnings) == 2 and all(line.startswith("zoo: WARNING: stage 0 epoch") for line in warnings)
    assert "stopped" not in result.out
    assert [(row["stage"], row["epoch_in_stage"]) for row in read_rows(Path("run"))] == [(0, 0), (0, 1), (1, 0)]


def test_drift_guard_does_not_stop_a_run_whose_metrics_improve(zoo, data):
    """Accuracy rising from chance is not drift: the guard watches loss components only."""
    write_recipe(DRIFT.format(lr=3e-2, action="stop"))
    result = zoo("finetune", "--recipe", "drifty", "--model", MODEL, "--data", data, "--run-dir", "run", *FAST)
    baseline_loss = load(Path("run/checkpoints/last.pt"))["engine_state"]["baseline"]["val_loss"]
    first = read_rows(Path("run"))[0]
    assert first["accuracy"] == 1.0  # from chance (three classes) to every image right: far outside ±20%
    assert first["val_loss"] < baseline_loss  # while the loss fell
    assert "stopped" not in result.out, result.err
    assert len(read_rows(Path("run"))) == 3


# --- EMA, gradient clipping, batch augmentation --------------------------------------------------------------


def test_ema_average_is_kept_and_saved_with_last(data, tmp_path):
    run_api("linear-probe", MODEL, data, tmp_path / "run", "stages.0.epochs=2", "stages.0.ema=0.9")
    last = load(tmp_path / "run" / "checkpoints" / "last.pt")
    ema = last["ema_state_dict"]
    assert ema["decay"] == 0.9 and ema["updates"] == last["step"] == 6
    weights, average = last["model_state_dict"], ema["weights"]
    assert not torch.equal(weights["fc.weight"], average["fc.weight"])  # the trained head is averaged
    assert torch.equal(weights["conv1.0.weight"], average["conv1.0.weight"])  # frozen layers are not touched


def test_ema_weights_are_validated_and_saved_as_best(zoo, data, tmp_path):
    run_api("linear-probe", MODEL, data, tmp_path / "run", "stages.0.epochs=2", "stages.0.ema=0.9")
    checkpoints = tmp_path / "run" / "checkpoints"
    best = load(checkpoints / "best.pt")
    assert best["provenance"]["weights"] == "ema"
    rows = read_rows(tmp_path / "run")
    best_row = next(row for row in rows if row["epoch"] == best["metrics"]["epoch"])
    evaluated = json.loads(zoo("eval", checkpoints / "best.pt", "--data", data, "--json").out)
    assert evaluated["val_loss"] == best_row["val_loss"]
    raw = json.loads(zoo("eval", checkpoints / "last.pt", "--data", data, "--json").out)  # the raw weights
    assert raw["val_loss"] != rows[-1]["val_loss"]


SGD_PROBE = (
    "optimizer=sgd",
    "momentum=0.0",
    "weight_decay=0.0",
    "stages.0.schedule=constant",
    "stages.0.epochs=2",
    "stages.0.lr=0.5",
)


def head_change_in_last_epoch(run_dir: Path) -> float:
    before = load(run_dir / "checkpoints" / "last.prev.pt")["model_state_dict"]
    after = load(run_dir / "checkpoints" / "last.pt")["model_state_dict"]
    return float(torch.cat([(after[key] - before[key]).flatten() for key in ("fc.weight", "fc.bias")]).norm())


def test_gradient_clipping_bounds_every_step(data, tmp_path):
    clip, lr, steps = 1e-3, 0.5, 3  # 24 training images in batches of 8
    run_api("linear-probe", MODEL, data, tmp_path / "clipped", *SGD_PROBE, f"stages.0.grad_clip={clip}")
    run_api("linear-probe", MODEL, data, tmp_path / "free", *SGD_PROBE)
    clipped, free = head_change_in_last_epoch(tmp_path / "clipped"), head_change_in_last_epoch(tmp_path / "free")
    assert 0 < clipped <= lr * clip * steps * (1 + 1e-5)  # plain SGD: each step moves at most lr * clip
    assert free > 10 * lr * clip * steps


@pytest.mark.parametrize("augment", ["mosaic", "mixup"])
def test_batch_augmentation_changes_what_the_model_learns(data, tmp_path, augment):
    plain = run_api("linear-probe", MODEL, data, tmp_path / "plain", "stages.0.epochs=1", use_cache=False)
    mixed = run_api(
        "linear-probe", MODEL, data, tmp_path / "mixed", "stages.0.epochs=1", f"stages.0.augment.{augment}=1.0"
    )
    assert not mixed.history[0]["cached"]  # random batches: never over cached features
    assert mixed.history[0]["train_loss"] != plain.history[0]["train_loss"]
    before = load(tmp_path / "plain" / "checkpoints" / "last.pt")["model_state_dict"]["fc.weight"]
    after = load(tmp_path / "mixed" / "checkpoints" / "last.pt")["model_state_dict"]["fc.weight"]
    assert not torch.allclose(before, after)
