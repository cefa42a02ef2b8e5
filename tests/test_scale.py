"""Scale: the feature cache within a memory budget, several machines through torchrun's rendezvous,
and FSDP (``fully_shard``) with checkpoints that do not depend on the strategy.

The multi-machine and FSDP runs are real: two "nodes" of one process each on 127.0.0.1, and two
gloo processes on the CPU (slow). The refusals run in-process, before any process starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from conftest import assert_one_error, assert_same_tensors, write_image_folder

from zoo_core.engine.cache import FeatureStore
from zoo_core.engine.setup import FEATURE_SPILL_DIR
from zoo_core.engine.strategy import shard_units
from zoo_core.groups import layer_groups

MODEL = "timm:test_resnet"
COMMON = ("--model", MODEL, "--no-pretrained", "--image-size", "32")


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir, "checkpoints", "last.pt"), map_location="cpu", weights_only=True)["model_state_dict"]


# -- the feature cache within a budget ------------------------------------------------------------------


def test_spilled_features_are_the_values_kept_in_memory(tmp_path):
    chunks = [torch.randn(5, 4, 3), torch.randn(3, 4, 3)]
    in_memory, spilled = FeatureStore(8, 10**9, tmp_path / "a"), FeatureStore(8, 0, tmp_path / "b")
    for chunk in chunks:
        in_memory.append(chunk)
        spilled.append(chunk)
    assert not in_memory.spilled and spilled.spilled
    assert torch.equal(in_memory.result(), spilled.result()) and torch.equal(spilled.result(), torch.cat(chunks))
    assert list((tmp_path / "b").iterdir()) == [tmp_path / "b" / "level0.npy"]
    spilled.discard()
    assert not (tmp_path / "b").exists()


def test_multi_scale_features_spill_one_file_per_map(tmp_path):
    store = FeatureStore(2, 0, tmp_path / "maps")
    store.append([torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)])
    levels = store.result()
    assert [tuple(level.shape) for level in levels] == [(2, 3, 4, 4), (2, 3, 2, 2)]
    assert sorted(path.name for path in (tmp_path / "maps").iterdir()) == ["level0.npy", "level1.npy"]


def test_a_head_only_run_spilled_to_disk_ends_with_the_same_weights(zoo, image_folder):
    args = ("finetune", "--recipe", "linear-probe", *COMMON, "--data", image_folder, "--set", "stages.0.epochs=2")
    assert zoo("-v", *args, "--run-dir", "memory").code == 0
    spilled = zoo("-v", *args, "--run-dir", "disk", "--cache-budget", "0")
    assert spilled.code == 0, spilled.err
    assert "above the budget of 0 B; writing it to" in spilled.err
    rows = [json.loads(line) for line in Path("disk", "metrics.jsonl").read_text().splitlines()]
    assert all(row["cached"] for row in rows)
    assert_same_tensors(last_weights(Path("disk")), last_weights(Path("memory")))
    assert not Path("disk", FEATURE_SPILL_DIR).exists()  # removed at the end


# -- several machines and FSDP: refused before any process starts --------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (("--nnodes", "2"), ("--nnodes 2", "--master-addr HOST --node-rank R", "--rdzv-endpoint HOST:PORT")),
        (("--nnodes", "2", "--master-addr", "127.0.0.1"), ("--master-addr needs this machine's --node-rank",)),
        (("--nnodes", "2", "--master-addr", "127.0.0.1", "--node-rank", "2"), ("--node-rank must be from 0 to 1",)),
        (("--nnodes", "2", "--rdzv-endpoint", "node0"), ("--rdzv-endpoint must be HOST:PORT", "'node0'")),
        (("--nnodes", "2", "--rdzv-endpoint", "h:1", "--master-addr", "h", "--node-rank", "0"), ("give one of them",)),
        (("--master-port", "29500"), ("--master-port goes with --master-addr",)),
    ],
    ids=["no-address", "no-node-rank", "node-rank-too-large", "endpoint-without-port", "two-addresses", "port-alone"],
)
def test_a_multi_node_command_without_a_place_to_meet_is_refused(zoo, image_folder, flags, fragments):
    result = zoo("finetune", "--recipe", "linear-probe", *COMMON, "--data", image_folder, *flags)
    assert_one_error(result, *fragments)
    assert not Path("runs").exists()


def test_a_global_batch_that_does_not_split_over_the_nodes_is_refused(zoo, image_folder):
    result = zoo("finetune", "--recipe", "linear-probe", *COMMON, "--data", image_folder, "--set", "batch_size=7",
                 "--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", "1")  # fmt: skip
    assert_one_error(result, "7", "2")
    assert not Path("runs").exists()


def test_fsdp_with_compile_is_refused(zoo, image_folder):
    result = zoo("finetune", "--recipe", "linear-probe", *COMMON, "--data", image_folder, "--strategy", "fsdp", "--compile", "--nproc", "2")
    assert_one_error(result, "--strategy fsdp with --compile", "--strategy ddp")


def test_fsdp_with_an_ema_stage_is_refused(zoo, image_folder):
    result = zoo("finetune", "--recipe", "linear-probe", *COMMON, "--data", image_folder, "--strategy", "fsdp", "--nproc", "2",
                 "--set", "stages.0.ema=0.99")  # fmt: skip
    assert_one_error(result, "stages[0].ema", "--set stages[0].ema=0")


def test_fsdp_units_follow_the_layer_groups():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    groups = layer_groups(model, granularity="coarse")
    units = shard_units(model, groups)
    owner = {param: group.name for group in groups for param in group.params}
    for unit in units:  # each unit lies inside one group
        assert len({owner[f"{unit}.{name}"] for name, _ in model.get_submodule(unit).named_parameters()}) == 1
    covered = {f"{unit}.{name}" for unit in units for name, _ in model.get_submodule(unit).named_parameters()}
    assert covered == set(owner)  # resnet has no loose parameters: the root unit holds none
    assert {"layer4", "fc"} <= set(units)


# -- real processes -----------------------------------------------------------------------------------------


_given: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that no other run of this module was given (two runs at one port would meet)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def start(*argv: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zoo_core", *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a process group per node, so a test can kill a node with its workers
        # one thread per process whatever the layout: a thread count changes the order of float sums
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


@pytest.fixture(scope="module")
def scale_data(workspace: Path) -> Path:
    return write_image_folder(workspace / "data", classes=3, per_class=8)


# the full fine-tune recipe with its random crops, batches that split evenly over two processes
RUN = ("--recipe", "full-finetune", *COMMON, "--set", "batch_size=8", "--set", "stages.0.epochs=2", "--workers", "0")


def two_nodes(workspace: Path, data: Path, run_dir: Path, *extra: object) -> list[subprocess.Popen]:
    port = free_port()
    return [
        start("finetune", *RUN, "--data", data, "--run-dir", run_dir, "--nnodes", 2, "--node-rank", rank,
              "--master-addr", "127.0.0.1", "--master-port", port, *extra, cwd=workspace)  # fmt: skip
        for rank in (0, 1)
    ]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_of_one_process_train_what_one_node_of_two_does(workspace, scale_data):
    nodes = two_nodes(workspace, scale_data, workspace / "two-nodes")
    one = start("finetune", *RUN, "--data", scale_data, "--run-dir", workspace / "one-node", "--nproc", 2, cwd=workspace)
    for process in (*nodes, one):
        code, err = finish(process)
        assert code == 0, err
    assert_same_tensors(last_weights(workspace / "two-nodes"), last_weights(workspace / "one-node"))
    assert sorted(path.name for path in (workspace / "two-nodes" / "checkpoints").iterdir())[:1] == ["best.pt"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_resume_a_killed_run_exactly(workspace, scale_data):
    run_dir = workspace / "killed"
    nodes = two_nodes(workspace, scale_data, run_dir, "--set", "stages.0.epochs=3")
    first_epoch = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_epoch.exists(), "the run wrote no checkpoint"
    for process in nodes:  # kill -9 both machines' agents and workers
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for group in (run_dir, workspace / "whole"):  # one pair of nodes at a time: two cores
        extra = ("--resume",) if group == run_dir else ()
        for process in two_nodes(workspace, scale_data, group, "--set", "stages.0.epochs=3", *extra):
            code, err = finish(process)
            assert code == 0, err
    assert_same_tensors(last_weights(run_dir), last_weights(workspace / "whole"))


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_trains_as_ddp_and_writes_the_usual_checkpoint(workspace, scale_data, zoo):
    fsdp = start("finetune", *RUN, "--data", scale_data, "--run-dir", workspace / "fsdp", "--nproc", 2, "--strategy", "fsdp", cwd=workspace)
    code, err = finish(fsdp)
    assert code == 0, err
    ddp = workspace / "one-node" if (workspace / "one-node").exists() else None
    if ddp is None:
        code, err = finish(start("finetune", *RUN, "--data", scale_data, "--run-dir", workspace / "ddp", "--nproc", 2, cwd=workspace))
        assert code == 0, err
        ddp = workspace / "ddp"
    sharded, replicated = last_weights(workspace / "fsdp"), last_weights(ddp)
    assert sorted(sharded) == sorted(replicated)
    # reduce-scatter and all-reduce sum in different orders: equal within float rounding
    assert all(torch.allclose(sharded[key].float(), replicated[key].float(), atol=1e-5) for key in sharded)
    saved = {name: torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer_state_dict"] for name, run in (("fsdp", workspace / "fsdp"), ("ddp", ddp))}
    assert saved["fsdp"]["state"].keys() == saved["ddp"]["state"].keys()  # gathered whole, in the unsharded layout
    assert all(saved["fsdp"]["state"][key]["exp_avg"].shape == saved["ddp"]["state"][key]["exp_avg"].shape for key in saved["ddp"]["state"])
    result = zoo("eval", str(workspace / "fsdp" / "checkpoints" / "best.pt"), "--data", str(scale_data), "--json")
    assert result.code == 0, result.err
    assert 0 <= json.loads(result.out)["accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.distributed
def test_under_fsdp_the_gradient_figures_of_the_shards_add_up_to_ddps(workspace, scale_data):
    """Each process holds a shard of every gradient: the squared norms are summed once per epoch."""
    for name, strategy in (("fsdp", "fsdp"), ("one-node", "ddp")):
        if not (workspace / name / "metrics.jsonl").exists():  # the tests above leave them; alone, this one runs them
            code, err = finish(start("finetune", *RUN, "--data", scale_data, "--run-dir", workspace / name, "--nproc", 2, "--strategy", strategy, cwd=workspace))
            assert code == 0, err
    rows = {name: [json.loads(line) for line in (workspace / name / "metrics.jsonl").read_text().splitlines()] for name in ("fsdp", "one-node")}
    for sharded, replicated in zip(rows["fsdp"], rows["one-node"]):
        figures = [key for key in replicated if key.startswith(("grad_norm", "update_ratio"))]
        assert figures and figures == [key for key in sharded if key.startswith(("grad_norm", "update_ratio"))]
        for key in figures:
            assert sharded[key] == pytest.approx(replicated[key], rel=1e-3), key


@pytest.mark.slow
@pytest.mark.distributed
def test_an_fsdp_run_resumes_exactly(workspace, scale_data):
    run_dir = workspace / "fsdp-killed"
    args = ("finetune", *RUN, "--data", scale_data, "--nproc", 2, "--strategy", "fsdp", "--set", "stages.0.epochs=3")
    process = start(*args, "--run-dir", run_dir, cwd=workspace)
    first_epoch = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for run in (start(*args, "--run-dir", run_dir, "--resume", cwd=workspace), start(*args, "--run-dir", workspace / "fsdp-whole", cwd=workspace)):
        code, err = finish(run)
        assert code == 0, err
    assert_same_tensors(last_weights(run_dir), last_weights(workspace / "fsdp-whole"))
