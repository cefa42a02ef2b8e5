"""Planning a transfer from a ViT-B safetensors checkpoint without loading tensors, against
``torch.load`` of the same weights (goal: <= 0.1x the time), and the plan from the header is
identical to the plan computed from the loaded tensors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch
from common import machine, median, report, timed
from safetensors.torch import save_file

from zoo_core.models import build_skeleton
from zoo_core.plans import plan_transfer
from zoo_core.registry import Registry

REPEAT = 5
ARCH = "vit_base_patch16_224"


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-plan-"))
    model = timm.create_model(ARCH, pretrained=False)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    save_file(state, folder / "vit.safetensors")
    torch.save(state, folder / "vit.pt")
    del model, state

    registry = Registry.load()
    target = build_skeleton(registry.resolve(f"timm:{ARCH}"), registry=registry, num_classes=10)  # meta device

    def from_header() -> object:
        return plan_transfer(folder / "vit.safetensors", target, registry=registry)

    def load() -> object:
        return torch.load(folder / "vit.pt", map_location="cpu", weights_only=True)

    from_header(), load()  # warm the page cache for both files
    plan_times, load_times = [], []
    for _ in range(REPEAT):
        plan_times += timed(from_header, 1)
        load_times += timed(load, 1)
    header_plan = from_header().to_dict()
    loaded_plan = plan_transfer(load(), target, registry=registry).to_dict()
    identical = {k: v for k, v in header_plan.items() if k != "source"} == {k: v for k, v in loaded_plan.items() if k != "source"}
    ratio = median(plan_times) / median(load_times)
    report(
        f"transfer plan from a {params / 1e6:.0f}M-parameter ViT-B ({machine()})",
        [
            ("plan from safetensors header", f"{median(plan_times) * 1000:.1f} ms (median of {REPEAT})"),
            ("torch.load of the same weights", f"{median(load_times) * 1000:.1f} ms (median of {REPEAT})"),
            ("ratio (goal <= 0.10)", f"{ratio:.3f}  {'OK' if ratio <= 0.1 else 'MISSED'}"),
            ("plan identical to loaded-tensor plan", str(identical)),
        ],
    )


if __name__ == "__main__":
    main()
