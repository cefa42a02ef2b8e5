"""Around a run: ``zoo runs`` (finished, interrupted, failed), ``--clean``, per-class evaluation with
its confusion matrix, top-k only where it means something, and resuming a finished run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import write_image_folder

from zoo_core import hookimpl
from zoo_core.engine.api import finetune as run

MODEL = "timm:test_resnet"
FAST = ("--model", MODEL, "--no-pretrained", "--image-size", "32", "--set", "batch_size=8")


class FailAt:
    """A throwaway plugin: an error right after epoch ``epoch`` (its checkpoint written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @hookimpl
    def zoo_on_epoch_end(self, run, epoch, metrics):
        if epoch == self.epoch:
            raise RuntimeError("the disk went away")


def finetune(zoo, data: Path, run_dir: str, *extra: str):
    return zoo("finetune", "--recipe", "linear-probe", *FAST, "--data", data, "--run-dir", run_dir, "--set", "stages.0.epochs=2", *extra)


def test_runs_lists_finished_interrupted_and_failed_runs(zoo, image_folder, make_registry):
    assert finetune(zoo, image_folder, "runs/done").code == 0
    # killed: a real process, SIGKILL once its first checkpoint is written
    killed = subprocess.Popen(
        [sys.executable, "-m", "zoo_core", "finetune", "--recipe", "linear-probe", *FAST, "--data", str(image_folder),
         "--run-dir", "runs/killed", "--set", "stages.0.epochs=50", "--no-cache"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not Path("runs/killed/checkpoints/last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    try:
        run("linear-probe", MODEL, image_folder, run_dir="runs/failed", pretrained=False, image_size=32,
            overrides=["batch_size=8", "stages.0.epochs=3"], registry=make_registry(FailAt(1)))  # fmt: skip
    except RuntimeError:
        pass
    result = zoo("runs", "--json")
    assert result.code == 0, result.err
    runs = {Path(entry["path"]).name: entry for entry in json.loads(result.out)}
    assert {name: entry["status"] for name, entry in runs.items()} == {"done": "finished", "killed": "interrupted", "failed": "failed"}
    assert (runs["done"]["epochs_run"], runs["done"]["epochs"], runs["failed"]["epochs_run"]) == (2, 2, 2)
    assert runs["failed"]["error"] == "the disk went away"
    assert runs["done"]["best"]["metric"] == "val_loss" and runs["done"]["recipe"] == "linear-probe" and runs["done"]["model"] == MODEL
    assert runs["done"]["size"] == sum(path.stat().st_size for path in Path("runs/done").rglob("*") if path.is_file())
    text = zoo("runs").out
    assert "STATUS" in text and "interrupted" in text and "runs/failed failed: the disk went away" in text


def test_runs_clean_removes_only_what_finished_runs_no_longer_need(zoo, image_folder):
    assert finetune(zoo, image_folder, "runs/done").code == 0
    Path("runs/half").mkdir(parents=True)
    for name in ("run.json", "recipe.json", "metrics.jsonl"):  # an interrupted run: its first epoch only
        Path("runs/half", name).write_text(Path("runs/done", name).read_text().splitlines()[0] if name == "metrics.jsonl" else Path("runs/done", name).read_text())
    (Path("runs/half/checkpoints")).mkdir()
    for name in ("last.pt", "last.prev.pt"):
        (Path("runs/half/checkpoints") / name).write_bytes((Path("runs/done/checkpoints") / "last.pt").read_bytes())
    assert Path("runs/done/checkpoints/last.prev.pt").exists()
    result = zoo("runs", "--clean")
    assert result.code == 0, result.err
    assert "cleaned 1 finished runs" in result.out
    assert not Path("runs/done/checkpoints/last.prev.pt").exists() and Path("runs/half/checkpoints/last.prev.pt").exists()
    for name in ("last.pt", "best.pt"):
        torch.load(Path("runs/done/checkpoints", name), weights_only=True)  # what stays still loads
    assert zoo("runs", "--clean").out.strip().endswith("nothing to clean")


def test_runs_of_a_missing_folder_is_one_line(zoo):
    result = zoo("runs", "nowhere")
    assert result.code == 2 and result.err.strip() == "zoo: error: nowhere: no such folder; give the folder your runs are in (zoo runs DIR)"


def test_resuming_a_finished_run_says_so_and_exits_0(zoo, image_folder):
    assert finetune(zoo, image_folder, "run").code == 0
    before = (Path("run/checkpoints/last.pt")).read_bytes()
    result = finetune(zoo, image_folder, "run", "--resume")
    assert result.code == 0, result.err
    assert "the run is finished (2 epochs, all 1 stages); nothing to resume" in result.err
    assert "resumed at stage" not in result.err
    assert Path("run/checkpoints/last.pt").read_bytes() == before


def test_eval_per_class_figures_equal_a_confusion_matrix_counted_by_hand(zoo, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=3, per_class=9)
    assert finetune(zoo, data, "run").code == 0
    result = zoo("eval", "run/checkpoints/best.pt", "--data", data, "--json")
    assert result.code == 0, result.err
    evaluation = json.loads(result.out)
    names = ["class0", "class1", "class2"]
    images = sorted((data / "val").rglob("*.png"))
    predicted = json.loads(zoo("predict", "run/checkpoints/best.pt", *images, "--json", "--top-k", "1").out)
    counts = [[0] * 3 for _ in names]
    for image, answer in zip(images, predicted):
        counts[names.index(image.parent.name)][names.index(answer["classes"][0]["name"])] += 1
    assert evaluation["confusion_matrix"] == {"classes": names, "counts": counts}
    for index, row in enumerate(evaluation["per_class"]):
        hits, predicted_as, support = counts[index][index], sum(r[index] for r in counts), sum(counts[index])
        precision, recall = hits / max(predicted_as, 1), hits / support
        assert row["class"] == names[index] and row["support"] == support
        assert abs(row["precision"] - precision) < 1e-9 and abs(row["recall"] - recall) < 1e-9
        assert abs(row["f1"] - (2 * precision * recall / (precision + recall) if hits else 0.0)) < 1e-9
    assert abs(evaluation["accuracy"] - sum(counts[i][i] for i in range(3)) / len(images)) < 1e-9
    text = zoo("eval", "run/checkpoints/best.pt", "--data", data).out
    assert "CLASS" in text and "PRECISION" in text and "confusion matrix (rows: true class, columns: predicted)" in text
    Path("eval.json").write_text(result.out)
    drawn = zoo("plot", "eval.json", "-o", "matrix.png")
    assert drawn.code == 0, drawn.err
    assert Path("matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top5_is_reported_only_with_more_than_five_classes(zoo, tmp_path):
    few, many = write_image_folder(tmp_path / "few", classes=3, per_class=6), write_image_folder(tmp_path / "many", classes=6, per_class=6)
    assert finetune(zoo, few, "few").code == 0 and finetune(zoo, many, "many").code == 0
    rows = {name: [json.loads(line) for line in Path(name, "metrics.jsonl").read_text().splitlines()] for name in ("few", "many")}
    assert all("top5" not in row for row in rows["few"])
    assert all(0 <= row["top5"] <= 1 for row in rows["many"])


def test_building_the_name_index_says_so_once(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cold-home"))
    first = zoo("list", "resnet18*")
    assert first.code == 0, first.err
    assert "indexing timm names, about 5 to 10 s, once per timm version" in first.err
    assert "indexing torchvision names" in first.err
    again = zoo("list", "resnet18*")
    assert again.code == 0 and "indexing" not in again.err and again.out == first.out


def checkpoint_names(run_dir: str) -> set[str]:
    return {path.name for path in Path(run_dir, "checkpoints").iterdir()}


def test_retention_keeps_exactly_the_checkpoints_chosen_and_each_loads(zoo, image_folder):
    two_stages = ("--recipe", "multigriddet-backbone", *FAST, "--data", image_folder, "--set", "stages.*.epochs=1")
    assert zoo("finetune", *two_stages, "--run-dir", "default").code == 0
    assert checkpoint_names("default") == {"last.pt", "last.prev.pt", "best.pt"}
    assert zoo("finetune", *two_stages, "--run-dir", "all", "--keep", "last,best,stages").code == 0
    assert checkpoint_names("all") == {"last.pt", "last.prev.pt", "best.pt", "stage-0-frozen-backbone.pt", "stage-1-all.pt"}
    assert zoo("finetune", *two_stages, "--run-dir", "lean", "--keep", "best").code == 0
    assert checkpoint_names("lean") == {"best.pt"}
    for name in checkpoint_names("all"):
        content = torch.load(Path("all/checkpoints", name), weights_only=True)
        assert content["model_state_dict"] and content["provenance"]["model"].startswith(MODEL)
        # resume-only state (optimizer, RNG, engine) lives in last.pt alone
        assert ("optimizer_state_dict" in content) == name.startswith("last")
    evaluated = zoo("eval", "all/checkpoints/stage-0-frozen-backbone.pt", "--data", image_folder, "--json")
    assert evaluated.code == 0, evaluated.err
    assert zoo("export", "all/checkpoints/stage-1-all.pt", "-o", "stage.safetensors").code == 0
    sizes = {name: Path("all/checkpoints", name).stat().st_size for name in checkpoint_names("all")}
    assert sizes["stage-1-all.pt"] < sizes["last.pt"]  # no optimizer state


def test_keep_with_an_unknown_name_is_one_line(zoo, image_folder):
    result = zoo("finetune", "--recipe", "linear-probe", *FAST, "--data", image_folder, "--keep", "last,everything")
    assert result.code == 2 and "--keep takes some of last, best, stages" in result.err and "'last,everything'" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not Path("runs").exists()


def test_the_summary_block_counts_what_it_found_and_names_a_class_missing_from_val(zoo, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=3, per_class=6)
    import shutil

    shutil.rmtree(data / "val" / "class2")  # the class trains, and val has none of it
    result = finetune(zoo, data, "run")
    assert result.code == 0, result.err
    err = result.err
    assert f"data    {data} (image-folder: train/ and val/ folders): 3 classes, 18 train and 4 val images" in err
    assert "per class (train/val): class0 6/2, class1 6/2, class2 6/0" in err
    assert "zoo: WARNING:" in err and "no images of class 'class2' among the validation images" in err
    assert "model   timm:test_resnet" in err and "random initialisation" in err
    assert "  0 probe: 2 epochs, trains head" in err and "device  cpu, fp32" in err


def test_a_piped_run_logs_one_line_per_epoch_with_the_time_left(zoo, image_folder):
    result = zoo("finetune", "--recipe", "multigriddet-backbone", *FAST, "--data", image_folder, "--run-dir", "run",
                 "--set", "stages.*.epochs=2")  # fmt: skip
    assert result.code == 0, result.err
    epoch_lines = [line for line in result.err.splitlines() if " epoch " in line and "train_loss" in line]
    assert len(epoch_lines) == 4
    assert "ETA stage" in epoch_lines[0] and "run " in epoch_lines[0] and epoch_lines[-1].endswith("last epoch")
    assert sum("stage 0: training" in line or "stage 1: training" in line for line in result.err.splitlines()) == 2
