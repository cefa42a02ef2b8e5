"""``zoo eval`` of a 100 MB checkpoint with the archive check (every zip entry's CRC-32 re-read
and compared) against the same command without it (goal: <= 1.15x the time).

Both contenders run in this process, one after the other, REPEAT times each; the check's
per-process memory of verified files is cleared before every run, as a fresh ``zoo eval``
process would start. The file is in the page cache for both, so the check's cost is the CRC
computation, not the disk.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import timm
import torch
from common import machine, median, report, timed, write_image_folder

import zoo_core.checkpoint
from zoo_core import integrity
from zoo_core.checkpoint import save_checkpoint
from zoo_core.cli import main as zoo
from zoo_core.provenance import make_provenance

REPEAT = 7
ARCH = "resnet50"  # 25.6M parameters: about 100 MB in float32
CLASSES = ["class0", "class1", "class2"]


def sniff_only(path: Path) -> integrity.FileKind:
    """What the loader did before: no CRC comparison (foreign files are still refused)."""
    return integrity.sniff(path)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-integrity-"))
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(CLASSES))
    checkpoint = folder / "big.pt"
    provenance = make_provenance(model=f"timm:{ARCH}", num_classes=len(CLASSES), class_names=CLASSES)
    save_checkpoint({"model_state_dict": model.state_dict(), "epoch": 1, "val_loss": 1.0, "provenance": provenance}, checkpoint)
    size_mb = checkpoint.stat().st_size / 1e6
    data = write_image_folder(folder / "data", classes=len(CLASSES), per_class=6, size=32)
    del model
    argv = ["eval", str(checkpoint), "--data", str(data)]

    def run_eval() -> None:
        integrity.forget_verified()
        with contextlib.redirect_stdout(io.StringIO()):
            assert zoo(argv) == 0

    def run_eval_unchecked() -> None:
        original = zoo_core.checkpoint.check_checkpoint_file
        zoo_core.checkpoint.check_checkpoint_file = sniff_only
        try:
            run_eval()
        finally:
            zoo_core.checkpoint.check_checkpoint_file = original

    def check_alone() -> None:
        integrity.forget_verified()
        integrity.verify_zip(checkpoint)

    torch.set_num_threads(1)
    run_eval(), run_eval_unchecked()  # warm the page cache, the name index and the imports
    checked, unchecked = [], []
    for _ in range(REPEAT):  # interleaved, so both see the same machine noise
        checked += timed(run_eval, 1)
        unchecked += timed(run_eval_unchecked, 1)
    ratio = median(checked) / median(unchecked)
    crc = median(timed(check_alone, REPEAT))
    report(
        f"zoo eval of a {size_mb:.0f} MB checkpoint ({machine()})",
        [
            ("with the CRC-32 check", f"{median(checked) * 1000:.0f} ms (median of {REPEAT})"),
            ("without it", f"{median(unchecked) * 1000:.0f} ms (median of {REPEAT})"),
            ("the check alone", f"{crc * 1000:.0f} ms ({size_mb / crc / 1000:.1f} GB/s)"),
            ("ratio (goal <= 1.15)", f"{ratio:.3f}  {'OK' if ratio <= 1.15 else 'MISSED'}"),
        ],
    )


if __name__ == "__main__":
    main()
