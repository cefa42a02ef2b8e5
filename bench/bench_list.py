"""``zoo list`` cold start against ``python -c "import timm; timm.list_models()"`` (goal: ratio <= 0.1).

Both run as fresh processes, alternating, several times; the name index is built once first
(that is the one-off cost per installed timm/torchvision version).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from common import machine, median, report, timed

REPEAT = 7


def main() -> None:
    home = tempfile.mkdtemp(prefix="zoo-bench-home-")
    env = {**os.environ, "ZOO_HOME": home}
    zoo = [sys.executable, "-m", "zoo_core", "list", "resnet1*"]
    timm = [sys.executable, "-c", "import timm; timm.list_models('resnet1*')"]
    subprocess.run(zoo, env=env, check=True, capture_output=True)  # builds the index once

    def run(command: list[str]) -> None:
        subprocess.run(command, env=env, check=True, capture_output=True)

    zoo_times, timm_times = [], []
    for _ in range(REPEAT):
        zoo_times += timed(lambda: run(zoo), 1)
        timm_times += timed(lambda: run(timm), 1)
    ratio = median(zoo_times) / median(timm_times)
    report(
        f"zoo list cold start ({machine()})",
        [
            ("zoo list 'resnet1*'", f"{median(zoo_times) * 1000:.0f} ms (median of {REPEAT})"),
            ("import timm; list_models", f"{median(timm_times) * 1000:.0f} ms (median of {REPEAT})"),
            ("ratio (goal <= 0.10)", f"{ratio:.3f}  {'OK' if ratio <= 0.1 else 'MISSED'}"),
        ],
    )


if __name__ == "__main__":
    main()
