"""Run outputs beyond checkpoints: `zoo plot`, TensorBoard event files, progress bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = ["--recipe", "multigriddet-full", "--model", "timm:resnet10t", "--no-pretrained", "--image-size", "16",
       "--set", "stages.*.epochs=1", "--set", "batch_size=6"]


@pytest.fixture
def finished_run(zoo, image_folder: Path, isolated: Path) -> Path:
    result = zoo("finetune", *RUN, "--data", image_folder, "--run-dir", "runs/plotted")
    assert result.code == 0, result
    return isolated / "runs" / "plotted"


def test_plot_draws_a_png_of_the_run(zoo, finished_run: Path) -> None:
    result = zoo("plot", finished_run, "-o", "curves.png")
    assert result.code == 0, result
    assert Path("curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_defaults_to_the_run_folder(zoo, finished_run: Path) -> None:
    assert zoo("plot", finished_run).code == 0
    assert (finished_run / "curves.png").stat().st_size > 1000


def test_plot_of_a_folder_without_metrics_is_one_clear_line(zoo, isolated: Path) -> None:
    (isolated / "empty").mkdir()
    result = zoo("plot", "empty")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "zoo: error: empty: no metrics.jsonl; is this a run folder written by `zoo finetune`?"
    ]


def test_plot_without_matplotlib_says_how_to_install_it(finished_run: Path, tmp_path: Path) -> None:
    # a stand-in that makes `import matplotlib` fail, as on an install without the plot extra
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "zoo_core", "plot", str(finished_run)], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "zoo: error: plotting needs matplotlib: pip install 'zoo[plot]' (or pip install matplotlib)"
    ]
    assert not (finished_run / "curves.png").exists()


def test_tensorboard_receives_every_epoch(finished_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"))
    events.Reload()
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    logged = [event.value for event in events.Scalars("val_loss")]
    assert logged == pytest.approx([row["val_loss"] for row in rows])


def test_no_progress_bar_when_not_on_a_terminal(zoo, image_folder: Path) -> None:
    result = zoo("finetune", *RUN, "--data", image_folder, "--run-dir", "runs/quiet")
    assert result.code == 0
    assert "it/s" not in result.err and "\r" not in result.err


def test_progress_bar_on_a_terminal(image_folder: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    with open(terminal, "wb", closefd=True) as tty:
        done = subprocess.run(
            [sys.executable, "-m", "zoo_core", "finetune", *RUN, "--set", "batch_size=2", "--data", str(image_folder),
             "--run-dir", "runs/tty"],
            stdout=subprocess.DEVNULL, stderr=tty, timeout=300,
        )  # fmt: skip
    output = b""
    try:
        while chunk := os.read(controller, 65536):
            output += chunk
    except OSError:  # the terminal closed: everything has been read
        pass
    finally:
        os.close(controller)
    assert done.returncode == 0, output[-2000:]
    assert b"it/s" in output or b"s/it" in output  # tqdm's rate, drawn only on a terminal
