"""Several machines, measured side by side in one run on this one:

1. Two "nodes" of one process each, meeting at a static rendezvous on 127.0.0.1
   (``--nnodes 2 --node-rank R --master-addr 127.0.0.1``), against one node of two processes
   (``--nproc 2``): the final weights must be equal; the time ratio is reported.
2. The same two-process run with ``--strategy fsdp`` against ``--strategy ddp``: the weights
   agree within float rounding (reduce-scatter and all-reduce sum in different orders); the
   time ratio is reported. On one CPU, FSDP's gathers cost time and save nothing: it is for
   models that do not fit on one device.

gloo on the CPU; run from the repository root:

    .venv/bin/python bench/bench_scale.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, report, write_jpeg_folder

RUN = ("--recipe", "full-finetune", "--model", "timm:resnet10t", "--no-pretrained", "--image-size", "64",
       "--set", "batch_size=32", "--set", "stages.0.epochs=2", "--workers", "0")  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(*argv: object) -> subprocess.Popen:
    # one thread per process in every layout: a thread count changes the order of float sums, and
    # two nodes on one machine would otherwise each take all of its cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "zoo_core", *map(str, argv)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait(*processes: subprocess.Popen) -> None:
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"a run failed:\n{err[-2000:]}")


def timed_run(*launches: tuple[object, ...]) -> float:
    started = time.perf_counter()
    wait(*(start(*argv) for argv in launches))
    return time.perf_counter() - started


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model_state_dict"]


def main() -> None:
    print(f"bench_scale on {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ.setdefault("ZOO_HOME", str(root / "zoo-home"))
        data = write_jpeg_folder(root / "data", classes=4, per_class=64, val_per_class=16, size=(96, 72))
        base = ("finetune", *RUN, "--data", data)
        port = free_port()
        two_nodes = timed_run(*(
            (*base, "--run-dir", root / "nodes", "--nnodes", 2, "--node-rank", rank, "--master-addr", "127.0.0.1", "--master-port", port)
            for rank in (0, 1)
        ))  # fmt: skip
        one_node = timed_run((*base, "--run-dir", root / "procs", "--nproc", 2))
        fsdp = timed_run((*base, "--run-dir", root / "fsdp", "--nproc", 2, "--strategy", "fsdp"))
        nodes, procs, sharded = weights(root / "nodes"), weights(root / "procs"), weights(root / "fsdp")
        equal = all(torch.equal(nodes[key], procs[key]) for key in procs)
        close = max(float((sharded[key].float() - procs[key].float()).abs().max()) for key in procs)
        report("two nodes x one process against one node x two processes", [
            ("one node, --nproc 2", f"{one_node:.1f} s"),
            ("two nodes, --nnodes 2 (127.0.0.1)", f"{two_nodes:.1f} s"),
            ("ratio two nodes / one node", f"{two_nodes / one_node:.2f}"),
            ("final weights equal", "yes" if equal else "NO"),
        ])  # fmt: skip
        report("--strategy fsdp against ddp, two processes", [
            ("ddp", f"{one_node:.1f} s"),
            ("fsdp", f"{fsdp:.1f} s"),
            ("ratio fsdp / ddp", f"{fsdp / one_node:.2f}"),
            ("largest weight difference", f"{close:.1e}"),
        ])  # fmt: skip


if __name__ == "__main__":
    main()
