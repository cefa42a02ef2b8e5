"""Every device decision in one place: which device, AMP dtype, grad scaling, memory format.

CUDA gets bf16 autocast when the GPU supports it (no scaler needed), fp16 with a GradScaler
otherwise, channels-last memory and pinned host memory. MPS gets fp16 autocast. The CPU runs
in fp32: CPU autocast is slower than fp32 on most machines.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
import torch

from ..errors import RunError


@attrs.frozen
class DeviceConfig:
    device: torch.device
    amp_dtype: torch.dtype | None
    use_scaler: bool
    channels_last: bool
    pin_memory: bool

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            "grad_scaler": self.use_scaler,
            "channels_last": self.channels_last,
            "pin_memory": self.pin_memory,
        }


def pick_device(requested: str | None = None, local_rank: int | None = None) -> torch.device:
    """``requested`` if given, else cuda (this process's local rank), then mps, then cpu."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {requested}: CUDA is not available here; drop --device to use the CPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RunError(f"--device {requested}: MPS is not available here; drop --device to use the CPU")
        return device
    if torch.cuda.is_available():
        rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", rank % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure(device: torch.device, *, amp: bool = True) -> DeviceConfig:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        bf16 = amp and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float16 if amp else None
        return DeviceConfig(device, dtype, use_scaler=dtype is torch.float16, channels_last=True, pin_memory=True)
    if device.type == "mps":
        return DeviceConfig(device, torch.float16 if amp else None, use_scaler=False, channels_last=False, pin_memory=False)
    return DeviceConfig(device, None, use_scaler=False, channels_last=False, pin_memory=False)
