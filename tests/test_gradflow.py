"""Gradient flow per layer group: the figures each epoch, and the checks that speak when a group
meant to learn does not, or a frozen one moves (in the Engine, through the CLI, under DDP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import plugin_pyproject, write_image_folder, write_package
from torch import nn

MODEL = "timm:test_resnet"
FAST = ("--no-pretrained", "--image-size", "32")
TWO_STAGES = """
[recipes.two-stages]
batch_size = 8
[[recipes.two-stages.stages]]
name = "head"
epochs = 1
train = ["head"]
lr = 1e-2
[[recipes.two-stages.stages]]
name = "layer4"
epochs = 2
train = ["layer4", "head"]
lr = 1e-2
"""
MEDDLING_PLUGIN = {
    "pyproject.toml": plugin_pyproject("zoo-meddling-task", "zoo_meddling_task", "meddling"),
    "zoo_meddling_task/__init__.py": '''
        """A throwaway Zoo plugin: classification whose forward meddles with the model ($ZOO_MEDDLE)."""

        from zoo_core import hookimpl


        @hookimpl
        def zoo_register_tasks(register):
            from .task import MeddlingClassification

            register(MeddlingClassification())
    ''',
    "zoo_meddling_task/task.py": '''
        import os

        import torch
        from zoo_classification.task import ClassificationTask


        class MeddlingClassification(ClassificationTask):
            """While layer4 trains (the recipe's second stage), $ZOO_MEDDLE: ``requires-grad-off`` turns
            its requires_grad off; ``move-frozen`` nudges the stem's first convolution; ``bn-stats``
            runs the stem's BatchNorm in training mode, past its pin. $ZOO_MEDDLE_RANK: only on that rank."""

            name = "meddling-classification"

            def forward(self, model, batch):
                meddle = os.environ.get("ZOO_MEDDLE", "")
                rank = os.environ.get("ZOO_MEDDLE_RANK")
                inner = getattr(model, "module", model)
                layer4_trains = any(param.requires_grad for param in inner.layer4.parameters()) if hasattr(inner, "layer4") else False
                if torch.is_grad_enabled() and layer4_trains and (rank is None or os.environ.get("RANK", "0") == rank):
                    if meddle == "requires-grad-off":
                        inner.layer4.requires_grad_(False)
                    elif meddle == "move-frozen":
                        with torch.no_grad():
                            next(inner.conv1.parameters()).add_(1e-3)
                    elif meddle == "bn-stats":
                        torch.nn.BatchNorm2d.train(inner.bn1, True)
                return super().forward(model, batch)
    ''',
}


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_stage_run(workspace: Path) -> Path:
    """head alone for an epoch, then layer4 and head for two (the backbone through the model each step)."""
    from zoo_core.engine.api import finetune
    from zoo_core.registry import Registry

    catalog = workspace / "two-stages.toml"
    catalog.write_text(TWO_STAGES)
    data = write_image_folder(workspace / "data", classes=3, per_class=8)
    run_dir = workspace / "two-stages"
    finetune("two-stages", MODEL, data, run_dir=run_dir, pretrained=False, image_size=32, use_cache=False,
             registry=Registry.load([catalog]), keep=("last", "best", "stages"))  # fmt: skip
    return run_dir


def test_layer4_has_no_gradient_figures_while_frozen_and_positive_ones_once_it_trains(two_stage_run):
    first, *later = rows_of(two_stage_run)
    assert "grad_norm/layer4" not in first and "update_ratio/layer4" not in first
    assert first["grad_norm/head"] > 0
    assert later and all(row["grad_norm/layer4"] > 0 and row["grad_norm_max/layer4"] >= row["grad_norm/layer4"] for row in later)


def test_update_ratios_are_positive_exactly_for_the_groups_that_train(two_stage_run):
    for row in rows_of(two_stage_run):
        ratios = {key.removeprefix("update_ratio/"): value for key, value in row.items() if key.startswith("update_ratio/")}
        assert set(ratios) == set(row["trainable"]), row["epoch"]
        assert all(value > 0 for value in ratios.values()), ratios


def test_every_frozen_tensor_is_checked_each_epoch(two_stage_run):
    first, second, _ = rows_of(two_stage_run)
    model = torch.load(two_stage_run / "checkpoints" / "stage-0-head.pt", weights_only=True)["model_state_dict"]
    bn_buffers = sum(1 for name in model if name.endswith(("running_mean", "running_var", "num_batches_tracked")) and not name.startswith("fc"))
    frozen_params = [name for name in model if not name.startswith("fc.") and not name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert first["frozen_checked"] == len(frozen_params) + bn_buffers  # every backbone weight and every BatchNorm buffer
    layer4 = sum(1 for name in model if name.startswith("layer4."))
    assert second["frozen_checked"] == first["frozen_checked"] - layer4


def test_the_figures_go_to_tensorboard(two_stage_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(two_stage_run / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("grad_norm/layer4")]
    assert steps == [2, 3]  # epochs counted from 1; none while layer4 was frozen
    assert "update_ratio/head" in events.Tags()["scalars"]


def test_report_lists_the_two_checks_as_passed(zoo, two_stage_run):
    result = zoo("report", two_stage_run, "--json")
    checks = {check["check"].split(" (")[0]: check for check in json.loads(result.out)["checks"]}
    assert checks["every trained group learned"]["passed"] is True
    assert "stage 1: layer4, head" in checks["every trained group learned"]["detail"]
    assert checks["frozen groups stayed still"]["passed"] is True


def test_plot_grads_draws_one_picture(zoo, two_stage_run, tmp_path):
    from PIL import Image

    result = zoo("plot", two_stage_run, "--grads", "-o", tmp_path / "grads.png")
    assert result.code == 0, result
    with Image.open(tmp_path / "grads.png") as image:
        assert image.size[0] > 800


@pytest.mark.parametrize("targets", [("RUN", "RUN"), ("eval.json",)])
def test_plot_grads_of_several_runs_or_an_eval_json_is_one_line_and_writes_nothing(zoo, two_stage_run, targets):
    Path("eval.json").write_text('{"confusion_matrix": {"classes": ["a"], "counts": [[1]]}}')
    result = zoo("plot", *[two_stage_run if target == "RUN" else target for target in targets], "--grads")
    assert result.code == 2
    assert result.err.strip() == "zoo: error: zoo plot --grads draws the gradient flow of one run; give one RUN_DIR (not several, not an eval JSON)"
    assert not Path("eval-confusion.png").exists() and not (two_stage_run / "gradients.png").exists()


def test_each_stage_ends_with_one_gradient_flow_line(zoo, tmp_path):
    Path("zoo.toml").write_text(TWO_STAGES)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    result = zoo("finetune", "--recipe", "two-stages", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run", "--set", "stages.1.epochs=1")
    assert result.code == 0, result
    lines = [line for line in result.err.splitlines() if "gradient flow:" in line]
    assert len(lines) == 2
    assert "head grad" in lines[0] and "frozen stem, layer1, layer2, layer3, layer4: 90 tensors unchanged" in lines[0]
    assert "layer4 grad" in lines[1] and "frozen stem, layer1, layer2, layer3:" in lines[1]


def test_a_stage_that_lets_frozen_statistics_move_is_not_an_error(zoo, tmp_path):
    """Same groups frozen in both stages, but the second has ``bn = "train"``: their BatchNorm
    statistics may move there, and only their weights are checked."""
    Path("zoo.toml").write_text(TWO_STAGES.replace('train = ["layer4", "head"]', 'train = ["head"]\nbn = "train"'))
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    result = zoo("finetune", "--recipe", "two-stages", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run", "--no-cache",
                 "--set", "stages.1.epochs=1")  # fmt: skip
    assert result.code == 0, result
    first, second = rows_of(Path("run"))
    stage0 = torch.load("run/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    buffers = sum(1 for name in stage0 if name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert second["frozen_checked"] == first["frozen_checked"] - buffers


def test_no_gradient_flow_writes_no_figures_and_plot_grads_says_why(zoo, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    result = zoo("finetune", "--recipe", "linear-probe", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run",
                 "--set", "stages.0.epochs=1", "--no-gradient-flow")  # fmt: skip
    assert result.code == 0, result
    (row,) = rows_of(Path("run"))
    assert not [key for key in row if key.startswith(("grad_norm", "update_ratio", "frozen_checked"))]
    plotted = zoo("plot", "run", "--grads")
    assert plotted.code == 2
    assert plotted.err.strip() == "zoo: error: run: its metrics.jsonl has no gradient figures; they are written by `zoo finetune` unless --no-gradient-flow"


def test_the_figures_do_not_change_training_even_when_clipping(tmp_path):
    """With the figures on, clipping uses the norm they took; it must be clip_grad_norm_'s, bit for bit."""
    from zoo_core.engine.api import finetune

    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    weights = {}
    for flow in (True, False):
        result = finetune("full-finetune", MODEL, data, run_dir=tmp_path / f"flow-{flow}", pretrained=False, image_size=32,
                          overrides=["stages.0.epochs=1", "batch_size=8", "stages.0.grad_clip=0.05"], gradient_flow=flow)  # fmt: skip
        weights[flow] = torch.load(result.last_checkpoint, weights_only=True)["model_state_dict"]
    assert all(torch.equal(weights[True][name], weights[False][name]) for name in weights[False])
    assert rows_of(tmp_path / "flow-True")[0]["clipped"] == 1.0  # every step's norm is above 0.05


# --- the figures against ones computed by hand ---------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(x)))


def tiny_groups(model: nn.Module) -> Any:
    from zoo_core.groups import LayerGroup, LayerGroups
    from zoo_core.specs import Role

    names = [name for name, _ in model.named_parameters()]
    return LayerGroups([
        LayerGroup("body", Role.BACKBONE, tuple(name for name in names if not name.startswith("head."))),
        LayerGroup("head", Role.HEAD, tuple(name for name in names if name.startswith("head."))),
    ])  # fmt: skip


def test_figures_equal_the_ones_computed_from_the_grads_by_hand():
    from zoo_core.engine.distributed import DistInfo
    from zoo_core.engine.gradflow import GradientFlow

    torch.manual_seed(0)
    model = Tiny()
    groups = tiny_groups(model)
    flow = GradientFlow(model, groups, dist=DistInfo(), sharded=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = dict(model.named_parameters())
    start = {name: param.detach().clone() for name, param in params.items()}
    flow.begin_epoch(0, frozenset({"body", "head"}), steps=3)
    by_hand: dict[str, list[float]] = {"body": [], "head": []}
    totals, clip = [], 0.5
    for _ in range(3):
        loss = model(torch.randn(8, 4)).square().mean()
        loss.backward()
        for group in groups:
            by_hand[group.name].append(float(torch.cat([params[name].grad.flatten() for name in group.params]).norm()))
        total, covered = flow.record()
        assert torch.equal(total, torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        assert [id(p) for p in covered] == [id(p) for p in model.parameters()]
        totals.append(float(total))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    figures = flow.end_epoch(stage_index=0, stage_name="all", where="stage 0 epoch 1", clip=clip, rates={"body": 0.1, "head": 0.1})
    for group in groups:
        norms = by_hand[group.name]
        assert figures[f"grad_norm/{group.name}"] == pytest.approx(sum(norms) / 3, rel=1e-6)
        assert figures[f"grad_norm_max/{group.name}"] == pytest.approx(max(norms), rel=1e-6)
        moved = torch.cat([(params[name].detach() - start[name]).flatten() for name in group.params]).norm()
        weight = torch.cat([start[name].flatten() for name in group.params]).norm()
        assert figures[f"update_ratio/{group.name}"] == pytest.approx(float(moved / weight), rel=1e-5)
    assert figures["clipped"] == pytest.approx(sum(total > clip for total in totals) / 3)
    assert figures["frozen_checked"] == 0  # nothing frozen, and BatchNorm follows train()


def test_a_frozen_batchnorm_whose_statistics_move_is_an_error_naming_the_buffers():
    from zoo_core.engine.distributed import DistInfo
    from zoo_core.engine.gradflow import GradientFlow
    from zoo_core.errors import FrozenMovedError
    from zoo_core.freeze import apply_freeze

    model = Tiny()
    groups = tiny_groups(model)
    apply_freeze(model, groups, ["body"])  # body and its BatchNorm pinned
    flow = GradientFlow(model, groups, dist=DistInfo(), sharded=False)
    flow.begin_epoch(0, frozenset({"head"}), steps=1)
    nn.BatchNorm1d.train(model.norm, True)  # what a careless plugin does: past the pin
    model(torch.randn(8, 4)).sum().backward()
    flow.record()
    with pytest.raises(FrozenMovedError) as caught:
        flow.end_epoch(stage_index=0, stage_name="probe", where="stage 0 (probe) epoch 1", clip=None, rates={"head": 0.1})
    assert set(caught.value.names) == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert str(caught.value).startswith("stage 0 (probe) epoch 1: frozen tensors changed although their groups do not train: norm.running_mean (frozen BatchNorm statistics)")


def test_checksums_see_a_one_ulp_change_and_a_swap_of_two_values():
    from zoo_core.engine.gradflow import checksums

    weight = torch.randn(64)
    nudged, swapped = weight.clone(), weight.clone()
    nudged[7] = torch.nextafter(nudged[7], torch.tensor(float("inf")))
    swapped[[3, 9]] = swapped[[9, 3]]
    sums = checksums([weight, nudged, swapped, weight.half(), torch.tensor([5], dtype=torch.int64)])
    assert not torch.equal(sums[0], sums[1]) and not torch.equal(sums[0], sums[2])
    assert torch.equal(sums[0], checksums([weight.clone()])[0])


# --- plugins that meddle: the checks speak ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meddling_plugin(tmp_path_factory: pytest.TempPathFactory, installed_packages) -> Path:
    return installed_packages(write_package(tmp_path_factory.mktemp("meddling-plugin"), MEDDLING_PLUGIN))


@pytest.fixture
def meddling(meddling_plugin, on_path, monkeypatch, tmp_path):
    """``meddling("move-frozen")``: the meddling task is installed, the two-stage recipe is in ./zoo.toml;
    returns the data folder."""
    on_path(meddling_plugin)
    Path("zoo.toml").write_text(TWO_STAGES)

    def arrange(how: str) -> Path:
        monkeypatch.setenv("ZOO_MEDDLE", how)
        return write_image_folder(tmp_path / "data", classes=3, per_class=8)

    return arrange


def run_meddling(zoo, data: Path, *extra: str):
    return zoo("finetune", "--recipe", "two-stages", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run",
               "--task", "meddling-classification", "--no-cache", "--set", "stages.1.epochs=1", *extra)  # fmt: skip


def test_a_plugin_turning_requires_grad_off_on_a_trained_group_gets_a_warning_naming_it(zoo, meddling):
    result = run_meddling(zoo, meddling("requires-grad-off"))
    assert result.code == 0, result
    (warning,) = [line for line in result.err.splitlines() if line.startswith("zoo: WARNING: ")]
    assert warning.startswith("zoo: WARNING: stage 1 (layer4): group 'layer4' trains in this stage but its gradient was zero at every step")
    assert "do not require gradients (layer4.0.conv1.weight," in warning and "--strict-groups makes this an error" in warning
    report = json.loads(zoo("report", "run", "--json").out)
    (learned,) = [check for check in report["checks"] if check["check"].startswith("every trained group learned")]
    assert learned["passed"] is False and "layer4 at epoch 2 (stage 1)" in learned["detail"]


def test_strict_groups_makes_it_an_error_and_keeps_the_last_good_epoch(zoo, meddling):
    result = run_meddling(zoo, meddling("requires-grad-off"), "--strict-groups")
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.startswith("zoo: error: ")]
    assert len(lines) == 1 and "group 'layer4' trains in this stage but its gradient was zero" in lines[0]
    assert lines[0].endswith("(--strict-groups)")
    last = torch.load("run/checkpoints/last.pt", weights_only=True)
    assert last["epoch"] == 1  # stage 0's; the silent epoch was not saved
    assert json.loads(Path("run/failed.json").read_text())["type"] == "GroupNotLearningError"


@pytest.mark.parametrize(
    "how, named",
    [("move-frozen", "conv1.0.weight (group stem)"), ("bn-stats", "bn1.running_mean (frozen BatchNorm statistics)")],
)
def test_a_plugin_moving_a_frozen_group_is_an_error_naming_the_tensors(zoo, meddling, how, named):
    result = run_meddling(zoo, meddling(how))
    assert result.code == 2, result
    (line,) = [line for line in result.err.splitlines() if line.startswith("zoo: error: ")]
    assert line.startswith("zoo: error: stage 1 (layer4) epoch 1: frozen tensors changed although their groups do not train: ")
    assert named in line and "a bug in Zoo or in a plugin" in line
    assert torch.load("run/checkpoints/last.pt", weights_only=True)["epoch"] == 1  # stage 0's: the moved weights were never saved
    report = json.loads(zoo("report", "run", "--json").out)
    (still,) = [check for check in report["checks"] if check["check"] == "frozen groups stayed still"]
    assert still["passed"] is False and named in still["detail"]


# --- distributed and compiled ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_under_ddp_a_frozen_tensor_moved_on_one_rank_stops_every_rank_with_its_name(zoo_subprocess, meddling, monkeypatch):
    data = meddling("move-frozen")
    monkeypatch.setenv("ZOO_MEDDLE_RANK", "1")  # rank 0 sees nothing wrong in its own copy
    result = zoo_subprocess("finetune", "--recipe", "two-stages", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run",
                            "--task", "meddling-classification", "--no-cache", "--nproc", "2", timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "frozen tensors changed although their groups do not train: conv1.0.weight (group stem)" in result.stderr


@pytest.mark.slow
def test_under_ddp_the_figures_are_those_of_one_process(zoo_subprocess, tmp_path):
    Path("zoo.toml").write_text(TWO_STAGES)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    # BatchNorm on running statistics: with batch statistics, two halves of a batch are not the batch
    common = ("finetune", "--recipe", "two-stages", "--model", MODEL, *FAST, "--data", data, "--no-cache",
              "--set", "stages.1.epochs=1", "--set", "stages.*.bn=eval")  # fmt: skip
    for run_dir, nproc in (("one", "1"), ("two", "2")):
        result = zoo_subprocess(*common, "--run-dir", run_dir, "--nproc", nproc, env={"OMP_NUM_THREADS": "1"}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    for one, two in zip(rows_of(Path("one")), rows_of(Path("two"))):
        figures = [key for key in one if key.startswith(("grad_norm", "update_ratio"))]
        assert figures and figures == [key for key in two if key.startswith(("grad_norm", "update_ratio"))]
        for key in figures:
            assert two[key] == pytest.approx(one[key], rel=1e-4), key
        assert two["frozen_checked"] == one["frozen_checked"]


@pytest.mark.slow
def test_under_compile_layer4_learns_once_its_stage_unfreezes_it(workspace, tmp_path):
    """pytorch #139476: a graph captured while layer4 was frozen must not be reused once it trains."""
    from zoo_core.engine.api import finetune
    from zoo_core.registry import Registry

    catalog = tmp_path / "two-stages.toml"
    catalog.write_text(TWO_STAGES)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    result = finetune("two-stages", MODEL, data, run_dir=tmp_path / "compiled", pretrained=False, image_size=32, use_cache=False,
                      registry=Registry.load([catalog]), compile_backend="aot_eager", overrides=["stages.1.epochs=1"])  # fmt: skip
    head, layer4 = result.history
    assert "grad_norm/layer4" not in head
    assert layer4["grad_norm/layer4"] > 0 and layer4["update_ratio/layer4"] > 0


@pytest.mark.parametrize("scaler, level", [(False, "WARNING"), (True, "INFO")])
def test_a_nonfinite_gradient_is_a_warning_unless_a_loss_scaler_skips_it(caplog, scaler, level):
    import logging

    from zoo_core.engine.distributed import DistInfo
    from zoo_core.engine.gradflow import GradientFlow

    model = Tiny()
    flow = GradientFlow(model, tiny_groups(model), dist=DistInfo(), sharded=False, scaler=scaler)
    flow.begin_epoch(0, frozenset({"body", "head"}), steps=2)
    for poisoned in (False, True):
        model(torch.randn(8, 4)).sum().backward()
        if poisoned:
            model.head.weight.grad[0, 0] = float("inf")
        flow.record()
        model.zero_grad(set_to_none=True)
    with caplog.at_level(logging.INFO, logger="zoo_core.engine.gradflow"):
        figures = flow.end_epoch(stage_index=0, stage_name="all", where="stage 0 (all) epoch 1", clip=None, rates={})
    (record,) = [record for record in caplog.records if "NaN or infinite" in record.getMessage()]
    assert record.levelname == level
    assert record.getMessage().startswith("stage 0 (all) epoch 1: the gradient norm of 'head' was NaN or infinite at step 2 of the epoch first (1 step in all)")
    assert figures["grad_nonfinite_steps"] == 1 and figures["grad_nonfinite_groups"] == ["head"]
    assert figures["grad_norm/head"] > 0 and figures["grad_norm/head"] == figures["grad_norm_max/head"]  # the finite step alone


def test_report_of_a_run_that_froze_nothing_says_so(zoo, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    assert zoo("finetune", "--recipe", "full-finetune", "--model", MODEL, *FAST, "--data", data, "--run-dir", "run",
               "--set", "stages.0.epochs=1", "--set", "batch_size=8").code == 0  # fmt: skip
    (still,) = [check for check in json.loads(zoo("report", "run", "--json").out)["checks"] if check["check"] == "frozen groups stayed still"]
    assert still == {"check": "frozen groups stayed still", "passed": True, "detail": "nothing was frozen in its 1 epoch"}
