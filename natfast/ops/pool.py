"""k x k max/average pooling, k odd ('same' padding; the average excludes the padding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def pool2d_reference(x: torch.Tensor, kind: str, kernel: int, stride: int) -> torch.Tensor:
    pad = kernel // 2
    if kind == "max":
        return F.max_pool2d(x, kernel, stride, pad)
    return F.avg_pool2d(x, kernel, stride, pad, count_include_pad=False)


dispatch.register("pool2d", "reference", pool2d_reference)


def pool2d(x: torch.Tensor, kind: str, kernel: int = 3, stride: int = 1) -> torch.Tensor:
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    if x.dim() != 4 or kernel < 1 or kernel % 2 == 0 or stride < 1:
        raise ValueError(f"pool2d needs an (N, C, H, W) input, an odd kernel size and stride >= 1, got "
                         f"{tuple(x.shape)}, kernel {kernel}, stride {stride}")
    return dispatch.call("pool2d", x, kind, kernel, stride)
