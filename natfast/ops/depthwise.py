"""Fused ReLU + depthwise convolution: the first half of every sep_conv and dil_conv."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def relu_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    k = weight.shape[-1]
    return F.conv2d(F.relu(x), weight, None, stride, dilation * (k - 1) // 2, dilation, x.shape[1])


dispatch.register("relu_dwconv", "reference", relu_dwconv_reference)


def relu_dwconv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """conv2d(relu(x), weight, groups=C) with 'same' padding; weight is (C, 1, k, k), k odd."""
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[:2]) != (x.shape[1], 1) or \
            weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"relu_dwconv needs an (N, C, H, W) input and a (C, 1, k, k) weight with k odd, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if stride < 1 or dilation < 1:
        raise ValueError(f"relu_dwconv needs stride and dilation >= 1, got {stride} and {dilation}")
    return dispatch.call("relu_dwconv", x, weight, stride, dilation)
