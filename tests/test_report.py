"""``zoo report``: a run's stages and the fine-tuning checklist, read back from its folder, for
finished, drifting, early-stopped and interrupted runs; and the drift ratios every epoch logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import InterruptAt, assert_one_error, write_image_folder

MODEL = "timm:test_resnet"
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8")
RECIPES = """
[recipes.watched]
[[recipes.watched.stages]]
name = "heads"
epochs = 2
freeze = {freeze}
lr = {lr}
drift_guard = {{ band = 0.2, action = "{action}" }}
[[recipes.watched.stages]]
name = "all"
epochs = 1
lr = 1e-4
augment = {{ mixup = 0.2 }}

[recipes.patient]
[[recipes.patient.stages]]
name = "waits"
epochs = 4
freeze = 2
lr = 1e-3
early_stop = {{ monitor = "val_loss", mode = "min", patience = 1, min_delta = 100.0 }}
"""


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checks_of(report: dict) -> dict[str, dict]:
    return {check["check"]: check for check in report["checks"]}


@pytest.fixture
def data(isolated: Path) -> Path:
    return write_image_folder(isolated / "data", classes=3, per_class=8)


def finetune(
    zoo, recipe: str, data: Path, *, lr: float = 1e-3, freeze: int = 2, action: str = "warn", run_dir: str = "run"
):
    Path("zoo.toml").write_text(RECIPES.format(lr=lr, freeze=freeze, action=action))
    return zoo("finetune", "--recipe", recipe, "--model", MODEL, "--data", data, "--run-dir", run_dir, *FAST)


def test_every_epoch_logs_each_loss_component_over_its_value_before_training(zoo, data: Path) -> None:
    assert finetune(zoo, "watched", data).code == 0
    baseline = json.loads(Path("run/baseline.json").read_text())
    assert {"val_loss", "val_cls", "accuracy"} <= set(baseline)
    for row in rows_of(Path("run")):
        assert row["drift/loss"] == row["val_loss"] / baseline["val_loss"]
        assert row["drift/cls"] == row["val_cls"] / baseline["val_cls"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path("run/tensorboard")))
    events.Reload()
    assert [event.value for event in events.Scalars("drift/cls")] == pytest.approx(
        [row["drift/cls"] for row in rows_of(Path("run"))]
    )


def test_report_of_a_finished_run_lists_stages_and_passes_its_checks(zoo, data: Path) -> None:
    # a head rate at which the randomly initialised model learns enough in two epochs to end below its start
    assert finetune(zoo, "watched", data, lr=1e-2).code == 0
    result = zoo("report", "run", "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["status"] == "finished" and (report["epochs_run"], report["epochs"]) == (3, 3)
    heads, everything = report["stages"]
    assert (heads["name"], heads["epochs_run"], heads["end"]) == ("heads", 2, "completed")
    assert "stem" in heads["frozen"] and "fc" not in " ".join(heads["frozen"]) and everything["frozen"] == []
    assert everything["augment"] == {"mixup": 0.2} and everything["lr_by_group"]
    rows = rows_of(Path("run"))
    best = min(rows, key=lambda row: row["val_loss"])  # classification's monitor
    assert report["best"] == {
        "metric": "val_loss",
        "value": best["val_loss"],
        "epoch": best["epoch"],
        "stage": best["stage"],
    }
    checks = checks_of(report)
    assert checks["no non-finite loss or skipped step"]["passed"] is True
    watched = [name for name in checks if name.startswith(("loss within", "cls within"))]
    assert len(watched) == 2 and all("stages 0" in name or "stage 0" in name for name in watched)
    text = zoo("report", "run").out
    assert "#  STAGE  EPOCHS" in text and "validation loss below the starting model's" in text


def test_report_of_a_run_made_to_drift_shows_the_failing_lines_and_exits_1(zoo, data: Path) -> None:
    assert (
        finetune(zoo, "watched", data, lr=10.0, freeze=0, action="stop").code == 0
    )  # a huge rate: the losses leave the band
    result = zoo("report", "run")
    assert result.code == 1, result
    failing = [line for line in result.out.splitlines() if line.startswith("  FAIL")]
    assert any("loss within +20% of its starting value in stage 0: highest +" in line for line in failing), result.out
    assert any("stopped by drift guard after 1 of 2 epochs: val_loss" in line for line in failing), result.out
    report = json.loads(zoo("report", "run", "--json").out)
    assert report["status"] == "stopped by the drift guard" and report["passed"] is False
    assert report["stages"][1]["end"] == "not reached"


def test_report_names_an_early_stop_and_why(zoo, data: Path) -> None:
    assert finetune(zoo, "patient", data).code == 0
    report = json.loads(zoo("report", "run", "--json").out)
    stop = checks_of(report)["stage 0 (waits) stopped by early stopping after 2 of 4 epochs"]
    assert stop["passed"] is None and stop["detail"].startswith("val_loss did not improve on ")
    assert report["status"] == "finished" and report["stages"][0]["end"].startswith("early stopping: val_loss")
    assert "no stage has a drift_guard" in checks_of(report)["loss components within the drift band"]["detail"]


def test_report_of_an_interrupted_run_says_how_far_it_got(zoo, data: Path, make_registry) -> None:
    from zoo_core.engine.api import finetune as run

    Path("zoo.toml").write_text(RECIPES.format(lr=1e-3, freeze=2, action="warn"))
    with pytest.raises(KeyboardInterrupt):
        run("watched", MODEL, data, run_dir="run", pretrained=False, image_size=32, overrides=["batch_size=8"],
            registry=make_registry(InterruptAt(0), files=[Path("zoo.toml")]))  # fmt: skip
    report = json.loads(zoo("report", "run", "--json").out)
    assert report["status"] == "interrupted" and report["epochs_run"] == 1
    assert report["stages"][0]["end"] == "interrupted after 1 epochs" and report["stages"][1]["end"] == "not reached"
    assert "interrupted after 1 of 3 epochs" in checks_of(report)["run finished"]["detail"]


def test_plot_draws_the_components_and_the_band(zoo, data: Path) -> None:
    assert finetune(zoo, "watched", data).code == 0
    assert zoo("plot", "run", "-o", "curves.png").code == 0
    from PIL import Image

    assert Image.open("curves.png").size[0] > Image.open("curves.png").size[1] * 3  # three panels side by side


@pytest.mark.parametrize("folder, expected", [
    ("missing", "zoo: error: missing: no such run folder; give the --run-dir of a `zoo finetune` run"),
    ("empty", "zoo: error: empty: no run.json; is this a run folder written by `zoo finetune`?"),
])  # fmt: skip
def test_report_on_something_that_is_not_a_run_folder_is_one_line(
    zoo, isolated: Path, folder: str, expected: str
) -> None:
    (isolated / "empty").mkdir()
    assert assert_one_error(zoo("report", folder)) == expected
