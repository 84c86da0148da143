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
    """conv2d(relu(x), weight, groups=C) with 'same' padding; weight is (C, 1, k, k)."""
    return dispatch.call("relu_dwconv", x, weight, stride, dilation)
