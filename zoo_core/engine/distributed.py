"""DDP through torchrun: process-group setup, rank-0 helpers and the launcher.

``zoo finetune --nproc N`` re-runs itself in N workers under torchrun's elastic agent, started
in this process; each worker sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and joins a process
group (NCCL on GPUs, gloo on CPU). Only global rank 0 evaluates, logs and saves; the others wait
at barriers, and their console output goes to files.

On several machines (``--nnodes``) the same command runs on each, and their agents meet at a
rendezvous, as with torchrun: ``--master-addr``/``--master-port`` with each machine's
``--node-rank`` (torchrun's static rendezvous: node 0 hosts it), or ``--rdzv-endpoint HOST:PORT``
(c10d: any node may host it, ranks are assigned as nodes arrive).

A worker that stops on a ZooError does not print it: it leaves the line in a report file and the
launcher prints one line after every worker has ended. Printing from the worker raced the agent:
rank 0 could print, then be stopped before its exit status showed, and a second rank's line
followed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
import torch.distributed as dist

from ..errors import RunError
from ..fileio import atomic_write_text
from ..paths import WORKER_REPORTS_ENV, worker_reports

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig


@attrs.frozen
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # the processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> DistInfo:
    if not in_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast(info: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(info: DistInfo, tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM) -> torch.Tensor:
    """``tensor`` reduced in place across the ranks with ``op`` (a ``ReduceOp``); unchanged in one process."""
    if info.enabled:
        dist.all_reduce(tensor, op=op)
    return tensor


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@attrs.frozen
class WorkerFailed(Exception):
    """A worker ended other than by a ZooError that rank 0 reported: a crash, a signal, a bug."""

    message: str
    status: int  # what ``zoo`` should exit with
    stderr: str | None = None  # the file holding that worker's stderr, when it did not go to the console

    def __str__(self) -> str:
        return f"{self.message}; its stderr is in {self.stderr}" if self.stderr else self.message


DEFAULT_MASTER_PORT = 29500  # torchrun's
DEFAULT_RDZV_ID = "zoo"  # the agents of one job must agree on it; torchrun's default is "none"


def _endpoint(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RunError(f"{flag} must be HOST:PORT (e.g. node0.cluster:29400), got {text!r}")
    return host, int(port)


def _port(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise RunError(f"--master-port must be between 1 and 65535, got {value}")


@attrs.frozen
class Topology:
    """Where a run's processes are: ``nproc`` per machine on ``nnodes`` machines, and how their agents meet."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = attrs.field(default=None, validator=_port)
    rdzv_endpoint: str | None = None
    rdzv_id: str = DEFAULT_RDZV_ID

    def __attrs_post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc < 1:
            raise RunError(f"--nnodes and --nproc must be at least 1, got {self.nnodes} and {self.nproc}")
        if self.master_addr is not None and self.rdzv_endpoint is not None:
            raise RunError("--master-addr and --rdzv-endpoint are two ways to meet; give one of them")
        if self.rdzv_endpoint is not None:
            _endpoint(self.rdzv_endpoint, "--rdzv-endpoint")
            if self.node_rank is not None:
                raise RunError("--node-rank goes with --master-addr; with --rdzv-endpoint ranks are assigned as nodes join, so leave it out")
        if self.nnodes > 1 and self.master_addr is None and self.rdzv_endpoint is None:
            raise RunError(
                f"--nnodes {self.nnodes}: the machines need a place to meet; add --master-addr HOST --node-rank R "
                "(the same HOST on every machine, R from 0 to nnodes-1) or --rdzv-endpoint HOST:PORT"
            )
        if self.master_addr is not None and self.node_rank is None:
            raise RunError("--master-addr needs this machine's --node-rank (0 on the machine at --master-addr, then 1, 2 …)")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise RunError(f"--node-rank must be from 0 to {self.nnodes - 1} for --nnodes {self.nnodes}, got {self.node_rank}")
        if self.master_port is not None and self.master_addr is None:
            raise RunError("--master-port goes with --master-addr; add it, or use --rdzv-endpoint HOST:PORT")

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.master_addr is not None or self.rdzv_endpoint is not None

    @property
    def first_node(self) -> bool:
        """Whether this machine holds global rank 0 for sure (static rendezvous, or a single machine)."""
        return self.node_rank in (None, 0) if self.rdzv_endpoint is None else False


def _launch_config(topology: Topology, log_dir: str) -> LaunchConfig:
    if topology.master_addr is None and topology.rdzv_endpoint is None:
        return _standalone_config(topology.nproc, log_dir)
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    if topology.rdzv_endpoint is not None:
        backend, endpoint, configs = "c10d", topology.rdzv_endpoint, {}
    else:
        port = topology.master_port or DEFAULT_MASTER_PORT
        backend, endpoint, configs = "static", f"{topology.master_addr}:{port}", {"rank": topology.node_rank}
    # as on one machine: local rank 0 keeps the console (only global rank 0 prints, the others' errors
    # reach the launcher as reports), the rest write to files
    quiet = range(1, topology.nproc)
    return LaunchConfig(
        min_nodes=topology.nnodes,
        max_nodes=topology.nnodes,
        nproc_per_node=topology.nproc,
        run_id=topology.rdzv_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=configs,
        max_restarts=0,
        logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects={rank: Std.ALL for rank in quiet}),
    )


def _standalone_config(nproc: int, log_dir: str) -> LaunchConfig:
    """One node, ``nproc`` workers, a c10d rendezvous on a free loopback port: ``torchrun --standalone``."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        local_addr="127.0.0.1",
        max_restarts=0,  # LaunchConfig's default is 3: a failed run would start over
        # rank 0 speaks for the run; the others' output goes to files, named when one of them is the cause
        logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects={rank: Std.ALL for rank in range(1, nproc)}),
    )


def _stderr_file(log_dir: str, local_rank: int) -> str | None:
    """Where ``DefaultLogsSpecs`` put a redirected worker's stderr: ``<log_dir>/<run>/attempt_<n>/<local_rank>/``."""
    found = sorted(Path(log_dir).glob(f"*/attempt_*/{local_rank}/stderr.log"))
    return str(found[-1]) if found else None


def report_error(message: str) -> bool:
    """Leave a worker's ZooError for the launcher to print; ``False`` outside Zoo's launcher."""
    folder = worker_reports()
    if folder is None:
        return False
    atomic_write_text(folder / f"rank-{int(os.environ.get('RANK', '0'))}.txt", message)
    return True


def _reported(reports: Path) -> dict[int, str]:
    """The ranks that stopped on a ZooError, and their messages."""
    found = {}
    for path in reports.glob("rank-*.txt"):
        try:
            found[int(path.stem.removeprefix("rank-"))] = path.read_text()
        except (OSError, ValueError):
            continue
    return found


def _worker_failed(error: ChildFailedError, reports: Path, log_dir: str) -> WorkerFailed:
    """What to report for a failed worker group: the first rank's ZooError, else the first failure."""
    reported = _reported(reports)
    if 0 in reported:  # rank 0 speaks for the run; a peer's error is then usually the echo of it
        return WorkerFailed(reported[0], 2)
    if reported:  # another rank stopped on a ZooError first, and the agent stopped rank 0
        rank = min(reported)
        return WorkerFailed(f"rank {rank}: {reported[rank]}", 2)
    rank, failure = error.get_first_failure()
    stderr = _stderr_file(log_dir, failure.local_rank)  # None for local rank 0: it writes to the console
    if failure.exitcode < 0:
        return WorkerFailed(f"rank {rank} was killed by {failure.signal_name()}", 128 - failure.exitcode, stderr)
    return WorkerFailed(f"rank {rank} exited with status {failure.exitcode}", failure.exitcode, stderr)


def _quiet_agent_logs() -> None:
    """Keep the agent's own lines ("Sending process … closing signal", "failed (exitcode: …)") off stderr.

    The outcome is reported once, by rank 0 or by the caller. They go up to ERROR, and torch's
    module loggers set their own levels, so the package loggers stop propagating instead.
    ``zoo --debug`` keeps them.
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        quiet = logging.getLogger(name)
        quiet.propagate = False
        if not quiet.handlers:  # without one, logging's last-resort handler would print them
            quiet.addHandler(logging.NullHandler())


def launch(argv: Sequence[str], topology: Topology) -> int:
    """Run ``zoo <argv>`` in ``topology.nproc`` worker processes here, joining the other machines'
    when there are several; return 0 when they all succeeded.

    The elastic agent runs in this process rather than in a ``torchrun`` child so that a failed
    worker maps to Zoo's exit status instead of torchrun's ``ChildFailedError`` traceback.

    :raises WorkerFailed: when a worker stopped on a ZooError (status 2), crashed, was killed or
        exited with another status.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    _quiet_agent_logs()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // topology.nproc)))  # workers inherit it
    log_dir = tempfile.mkdtemp(prefix="zoo-ddp-")
    reports = Path(log_dir) / "reports"
    reports.mkdir()
    keep_logs = False
    outer_reports = os.environ.get(WORKER_REPORTS_ENV)
    os.environ[WORKER_REPORTS_ENV] = str(reports)  # the workers inherit this process's environment
    try:
        elastic_launch(_launch_config(topology, log_dir), entrypoint=sys.executable)("-m", "zoo_core", *argv)
        return 0
    except ChildFailedError as exc:
        failed = _worker_failed(exc, reports, log_dir)
        keep_logs = failed.stderr is not None
        raise failed from None
    except SignalException as exc:  # the agent has passed the signal on to the workers
        if exc.sigval == signal.SIGINT:
            return 130  # rank 0 has printed "zoo: interrupted"
        raise WorkerFailed(f"stopped by {exc.sigval.name}", 128 + exc.sigval) from None
    finally:
        if outer_reports is None:
            os.environ.pop(WORKER_REPORTS_ENV, None)
        else:
            os.environ[WORKER_REPORTS_ENV] = outer_reports
        if not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
