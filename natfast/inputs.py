"""Clear errors for inputs that are not what the networks take (not a failure deep in a conv)."""
from __future__ import annotations

from typing import Optional

import torch


def check_images(x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
    """A clear error for input that is not a batch of RGB images in the model's dtype (not a
    failure deep in a conv). `weight`: one of the model's parameters."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a batch of RGB images shaped (N, 3, H, W) with N >= 1 and H, W >= 2, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"images must be floating point (normalised as natfast.data does), got {x.dtype}")
    if weight is not None and x.dtype != weight.dtype and not _autocast_enabled(x.device.type):
        raise ValueError(f"images are {x.dtype} but the model's weights are {weight.dtype}: convert one to the "
                         f"other (e.g. x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # a torch that takes no device (CUDA's state; the CPU's has its own query)
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
