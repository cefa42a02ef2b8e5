"""Step time of a resnet-like model at the same batch in three settings (ratios, one run):

* Zoo's freeze level 1: backbone frozen with its BatchNorm frozen (only the head trains);
* a full fine-tune;
* the Lightning-style freeze that leaves BatchNorm trainable (``BaseFinetuning.freeze(train_bn=True)``,
  Lightning's own code when it is installed — see bench/with-lightning — else the same rule by hand).

Goals: frozen <= 0.5x full fine-tune, and frozen faster than the BN-trainable freeze.
"""

from __future__ import annotations

import copy

import timm
import torch
from common import machine, median, report
from torch.nn.modules.batchnorm import _BatchNorm

from zoo_core.freeze import freeze, unfreeze

ARCH, BATCH, SIZE, WARMUP, STEPS, ROUNDS = "resnet18", 32, 96, 2, 4, 3


def lightning_style(model: torch.nn.Module) -> str:
    backbone = [module for name, module in model.named_children() if name != "fc"]
    try:
        from lightning.pytorch.callbacks import BaseFinetuning

        BaseFinetuning.freeze(backbone, train_bn=True)
        return "lightning.pytorch BaseFinetuning.freeze(train_bn=True)"
    except ImportError:
        for module in backbone:
            for sub in module.modules():
                trainable = isinstance(sub, _BatchNorm)
                for param in sub.parameters(recurse=False):
                    param.requires_grad_(trainable)
        return "BN-trainable freeze by hand (Lightning not installed)"


def stepper(model: torch.nn.Module):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
    targets = torch.randint(0, 10, (BATCH,), generator=generator)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step) -> list[float]:
    import time

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    torch.manual_seed(0)
    base = timm.create_model(ARCH, pretrained=False, num_classes=10)
    frozen, full, bn_trainable = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    freeze(frozen, level=1)
    unfreeze(full)
    how = lightning_style(bn_trainable)
    steps = {"zoo freeze level 1 (BN frozen)": stepper(frozen), "full fine-tune": stepper(full), "BN-trainable freeze": stepper(bn_trainable)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(ROUNDS):  # interleave the settings so machine noise hits all of them
        for name, step in steps.items():
            times[name] += time_steps(step)
    medians = {name: median(values) for name, values in times.items()}
    full_time = medians["full fine-tune"]
    frozen_time = medians["zoo freeze level 1 (BN frozen)"]
    bn_time = medians["BN-trainable freeze"]
    rows = [(name, f"{value * 1000:.1f} ms/step  ({value / full_time:.2f}x full)") for name, value in medians.items()]
    rows += [
        ("frozen / full (goal <= 0.50)", f"{frozen_time / full_time:.2f}  {'OK' if frozen_time / full_time <= 0.5 else 'MISSED'}"),
        ("frozen / BN-trainable (goal < 1)", f"{frozen_time / bn_time:.2f}  {'OK' if frozen_time < bn_time else 'MISSED'}"),
        ("BN-trainable freeze implemented by", how),
    ]
    report(f"{ARCH}, batch {BATCH} at {SIZE}px, CPU ({machine()})", rows)


if __name__ == "__main__":
    main()
