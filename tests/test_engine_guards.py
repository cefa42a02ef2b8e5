"""Guards against bad numbers and bad input.

A non-finite loss skips its step and the run goes on; N in a row stop the run (exit 2, one
clear line); non-finite weights are never saved. The faults are injected by a throwaway task
plugin (a real pip-installed package in the ``zoo`` entry-point group) that wraps the built-in
classification task. Bad input stops before anything is written: exit 2 and one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import plugin_pyproject, write_image_folder, write_package

MODEL = "timm:test_resnet"
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8")
STEPS_PER_EPOCH = 3  # 24 training images in batches of 8

FAULTY_PLUGIN = {
    "pyproject.toml": plugin_pyproject("zoo-faulty-task", "zoo_faulty_task", "faulty"),
    "zoo_faulty_task/__init__.py": '''
        """A throwaway Zoo plugin: classification whose training goes wrong at chosen steps."""

        from zoo_core import hookimpl


        @hookimpl
        def zoo_register_tasks(register):
            from .task import FaultyClassification

            register(FaultyClassification())
    ''',
    "zoo_faulty_task/task.py": '''
        import os

        import torch
        from zoo_classification.task import ClassificationTask


        class FaultyClassification(ClassificationTask):
            """At the 1-based training steps in $ZOO_FAULT_STEPS the loss is NaN ($ZOO_FAULT=loss),
            or finite with NaN gradients ($ZOO_FAULT=gradient)."""

            name = "faulty-classification"

            def __init__(self):
                self.steps = {int(step) for step in os.environ.get("ZOO_FAULT_STEPS", "").split(",") if step}
                self.fault = os.environ.get("ZOO_FAULT", "loss")
                self.training_steps = 0

            def loss(self, outputs, batch, **options):
                losses = super().loss(outputs, batch, **options)
                if not torch.is_grad_enabled():  # validation
                    return losses
                self.training_steps += 1
                if self.training_steps in self.steps:
                    if self.fault == "loss":
                        losses["loss"] = losses["loss"] * float("nan")
                    else:  # sqrt'(0) is infinite: the value stays finite, every gradient becomes NaN
                        losses["loss"] = losses["loss"] + torch.sqrt((outputs.float() * 0).sum()) * 0
                return losses
    ''',
}


@pytest.fixture(scope="module")
def faulty_plugin(tmp_path_factory: pytest.TempPathFactory, installed_packages) -> Path:
    return installed_packages(write_package(tmp_path_factory.mktemp("faulty-plugin"), FAULTY_PLUGIN))


@pytest.fixture
def faulty(faulty_plugin, on_path, monkeypatch):
    """``faulty("2,3", fault="loss")``: the faulty task is installed and goes wrong at those steps."""
    on_path(faulty_plugin)

    def arrange(steps: str, fault: str = "loss") -> None:
        monkeypatch.setenv("ZOO_FAULT_STEPS", steps)
        monkeypatch.setenv("ZOO_FAULT", fault)

    return arrange


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", classes=3, per_class=8)


def probe(zoo, data: Path, *extra: str, epochs: int = 2, task: str = "faulty-classification"):
    return zoo(
        "finetune", "--recipe", "linear-probe", "--model", MODEL, "--data", data, "--run-dir", "run", "--task", task,
        *FAST, "--set", f"stages.0.epochs={epochs}", *extra,
    )  # fmt: skip


def read_rows(run_dir: Path = Path("run")) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint(name: str, run_dir: Path = Path("run")) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in state_dict.values() if tensor.is_floating_point())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("zoo: error:")]


# --- non-finite losses ---------------------------------------------------------------------------------


def test_the_faulty_task_trains_normally_without_faults(zoo, faulty, data):
    faulty("")
    result = probe(zoo, data)
    assert result.code == 0, result
    assert [row["skipped_steps"] for row in read_rows()] == [0, 0]


def test_nan_loss_at_step_k_is_skipped_and_the_run_continues(zoo, faulty, data):
    faulty("2")
    result = probe(zoo, data)
    assert result.code == 0, result
    rows = read_rows()
    assert [(row["skipped_steps"], row["step"]) for row in rows] == [
        (1, STEPS_PER_EPOCH - 1),
        (1, 2 * STEPS_PER_EPOCH - 1),
    ]
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for row in rows)
    assert "stage 0 epoch 1: non-finite loss (nan); step skipped (1 in a row)" in result.err
    assert all_finite(checkpoint("last.pt")["model_state_dict"])


@pytest.mark.parametrize("steps", ["2,3", "1,2,4,5"], ids=["two-in-a-row", "never-three-in-a-row"])
def test_fewer_than_n_in_a_row_do_not_stop_the_run(zoo, faulty, data, steps):
    faulty(steps)
    result = probe(zoo, data)
    assert result.code == 0, result
    assert read_rows()[-1]["skipped_steps"] == len(steps.split(","))
    assert len(read_rows()) == 2


def test_n_nonfinite_losses_in_a_row_stop_the_run_with_exit_2(zoo, faulty, data):
    faulty("4,5,6")  # every step of the second epoch
    result = probe(zoo, data)
    assert result.code == 2
    assert error_lines(result.err) == [
        "zoo: error: stage 0 epoch 2: 3 non-finite losses in a row; stopped. Lower the learning rate or check the data; "
        "the last good checkpoint is kept"
    ]
    assert result.err.strip().splitlines()[-1].startswith("zoo: error:")
    last = checkpoint("last.pt")  # the first epoch's, intact
    assert (last["epoch"], last["step"]) == (1, STEPS_PER_EPOCH)
    assert all_finite(last["model_state_dict"])


def test_nonfinite_weights_are_never_saved(zoo, faulty, data):
    faulty(str(2 * STEPS_PER_EPOCH), fault="gradient")  # the last step of the second epoch poisons the weights
    result = probe(zoo, data)
    assert result.code == 2
    (line,) = error_lines(result.err)
    assert "run (weights after epoch 2): NaN or infinite values in fc." in line
    assert "use an earlier checkpoint of that run" in line
    last = checkpoint("last.pt")
    assert last["epoch"] == 1  # the first epoch's checkpoint was kept, not replaced
    for path in Path("run/checkpoints").glob("*.pt"):
        assert all_finite(checkpoint(path.name)["model_state_dict"]), path.name


def test_a_nonfinite_gradient_norm_names_the_group_and_the_step_where_it_first_appeared(zoo, faulty, data):
    faulty(str(2 * STEPS_PER_EPOCH), fault="gradient")  # finite loss, NaN gradients at the second epoch's last step
    result = probe(zoo, data)
    (warning,) = [line for line in result.err.splitlines() if "NaN or infinite at step" in line]
    assert warning.startswith(
        f"zoo: WARNING: stage 0 (probe) epoch 2: the gradient norm of 'head' was NaN or infinite at step {STEPS_PER_EPOCH} of the epoch first (1 step in all)"
    )
    (line,) = error_lines(result.err)  # and then the weights it poisoned are refused, as before
    assert "NaN or infinite values in fc." in line


# --- bad input: exit 2, one line, nothing written -------------------------------------------------------------


def finetune_line(zoo, *argv: str, run_dir: str = "run") -> str:
    result = zoo("finetune", "--model", MODEL, "--run-dir", run_dir, *FAST, *argv)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error: "), result.err
    assert not Path(run_dir).exists()
    return lines[0]


def test_empty_data_folder(zoo, tmp_path):
    (tmp_path / "empty").mkdir()
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", tmp_path / "empty")
    assert line.startswith(f"zoo: error: {tmp_path / 'empty'}: no class folders; expected ")


def test_missing_data_folder(zoo, tmp_path):
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", tmp_path / "nowhere")
    assert line == f"zoo: error: {tmp_path / 'nowhere'}: no such data folder or file"


def test_data_path_that_is_a_file(zoo, tmp_path):
    (tmp_path / "images.txt").write_text("not a folder")
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", tmp_path / "images.txt")
    assert line.startswith(f"zoo: error: {tmp_path / 'images.txt'}: matches no classification data layout; readers: ")
    assert line.endswith("pass --data-format NAME to force one")


def test_class_folder_with_no_images(zoo, data):
    for image in (data / "train" / "class1").iterdir():
        image.unlink()
    (data / "train" / "class1" / "notes.txt").write_text("no images here")
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data)
    assert line.startswith(f"zoo: error: {data / 'train' / 'class1'}: class folder has no images")


def test_validation_class_unknown_to_training(zoo, data):
    (data / "val" / "class2").rename(data / "val" / "class9")
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data)
    assert line.startswith(f"zoo: error: {data / 'val' / 'class9'}: class 'class9' is not in the training classes")


def test_a_single_class(zoo, tmp_path):
    data = write_image_folder(tmp_path / "one", classes=1, per_class=8)
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data)
    assert "classification needs at least 2" in line


def test_recipe_naming_an_unknown_group(zoo, data):
    line = finetune_line(zoo, "--recipe", "lightweight-3stage", "--data", data, "--set", 'stages.0.train=["nope"]')
    assert "stages[0].train: unknown layer group 'nope'" in line
    assert "(groups: stem, " in line and "roles: backbone, neck, head" in line


def test_learning_rate_table_naming_an_unknown_group(zoo, data):
    line = finetune_line(zoo, "--recipe", "lightweight-3stage", "--data", data, "--set", "stages.0.lr={ hed = 1e-3 }")
    assert "stages[0].lr.hed: names no layer group or role - did you mean 'head'?" in line


def test_learning_rate_not_above_zero(zoo, data):
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data, "--set", "stages.0.lr=0")
    assert line == "zoo: error: --set (recipe 'linear-probe'): stages[0].lr: must be > 0, got 0"


def test_unknown_task(zoo, data):
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data, "--task", "clasification")
    assert line.startswith("zoo: error: unknown task 'clasification' - did you mean 'classification'?")


def test_unknown_recipe(zoo, data):
    line = finetune_line(zoo, "--recipe", "linear-prob", "--data", data)
    assert line.startswith("zoo: error: unknown recipe 'linear-prob' - did you mean 'linear-probe'?")


def test_unknown_augmentation_key(zoo, data):
    line = finetune_line(zoo, "--recipe", "linear-probe", "--data", data, "--set", "stages.0.augment.mosiac=0.3")
    assert line.startswith(
        "zoo: error: recipe 'linear-probe' stages[0].augment.mosiac: the classification task has no such augmentation "
        "- did you mean 'mosaic'?"
    )


def test_unreadable_image_is_named_and_the_run_can_be_retried(zoo, data):
    bad = data / "train" / "class1" / "005.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not an image")
    command = ("finetune", "--recipe", "linear-probe", "--model", MODEL, "--data", data, "--run-dir", "run", *FAST)
    result = zoo(*command, "--set", "stages.0.epochs=1")
    assert result.code == 2
    (line,) = error_lines(result.err)
    assert line.startswith(f"zoo: error: {bad}: cannot read this image")
    bad.write_bytes(good)
    retried = zoo(*command, "--set", "stages.0.epochs=1")
    assert retried.code == 0, retried


def test_unknown_group_leaves_nothing_that_blocks_the_corrected_command(zoo, data):
    command = (
        "finetune",
        "--recipe",
        "lightweight-3stage",
        "--model",
        MODEL,
        "--data",
        data,
        "--run-dir",
        "run",
        *FAST,
    )
    assert zoo(*command, "--set", 'stages.0.train=["nope"]').code == 2
    fixed = zoo(*command, "--set", "stages.*.epochs=1")
    assert fixed.code == 0, fixed
