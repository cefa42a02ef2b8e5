"""``zoo finetune --nproc``'s launcher speaks once: the workers leave their error lines, it prints one.

The DDP end-to-end runs are in test_engine_ddp.py (slow). These cases pin the order in which the
agent saw the workers end, which a real run leaves to chance: rank 0 could print its error, be
stopped by the agent before its own exit status showed, and a second rank's line followed.
"""

from __future__ import annotations

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from zoo_core.engine import distributed
from zoo_core.paths import WORKER_REPORTS_ENV


def failed_group(*exits: tuple[int, int]) -> ChildFailedError:
    """The error ``elastic_launch`` raises when the workers ``(rank, exit status)`` ended."""
    failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="") for rank, code in exits}
    return ChildFailedError("zoo_core", failures)


@pytest.fixture
def reports(tmp_path, monkeypatch):
    folder = tmp_path / "reports"
    folder.mkdir()
    monkeypatch.setenv(WORKER_REPORTS_ENV, str(folder))
    return folder


def report_as(rank: int, message: str, monkeypatch) -> None:
    monkeypatch.setenv("RANK", str(rank))
    assert distributed.report_error(message)


def test_rank_zero_line_wins_when_the_agent_saw_another_rank_end_first(reports, monkeypatch, tmp_path):
    report_as(0, "run/ (weights after epoch 1): NaN or infinite values in fc.weight", monkeypatch)
    report_as(1, "run/ (weights after epoch 1): NaN or infinite values in fc.weight", monkeypatch)
    # rank 1 exited with 2 first; the agent then stopped rank 0 (SIGTERM) after it had reported
    failed = distributed._worker_failed(failed_group((1, 2), (0, -15)), reports, str(tmp_path))
    assert (str(failed), failed.status) == ("run/ (weights after epoch 1): NaN or infinite values in fc.weight", 2)


def test_a_peer_error_is_named_by_its_rank_when_rank_zero_had_none(reports, monkeypatch, tmp_path):
    report_as(1, "data/train/3.png: cannot read the image", monkeypatch)
    failed = distributed._worker_failed(failed_group((1, 2), (0, -15)), reports, str(tmp_path))
    assert (str(failed), failed.status) == ("rank 1: data/train/3.png: cannot read the image", 2)


def test_a_crash_without_a_report_keeps_its_signal_status(reports, tmp_path):
    failed = distributed._worker_failed(failed_group((1, -9)), reports, str(tmp_path))
    assert (str(failed), failed.status) == ("rank 1 was killed by SIGKILL", 137)


def test_a_worker_error_is_left_for_the_launcher_not_printed(reports, monkeypatch, zoo):
    monkeypatch.setenv("RANK", "0")
    result = zoo("info", "no-such-model")
    assert (result.code, result.err) == (2, "")
    assert "no-such-model" in (reports / "rank-0.txt").read_text()


def test_outside_a_worker_the_error_is_printed(monkeypatch, zoo):
    monkeypatch.delenv(WORKER_REPORTS_ENV, raising=False)
    assert not distributed.report_error("anything")
    result = zoo("info", "no-such-model")
    assert result.code == 2 and result.err.startswith("zoo: error: ") and "no-such-model" in result.err
