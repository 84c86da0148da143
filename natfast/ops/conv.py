"""Dense k x k convolution after a ReLU: conv_1x1/3x3/5x5 candidates (ReLU, conv, BN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def relu_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return F.conv2d(F.relu(x), weight, None, stride, weight.shape[-1] // 2)


dispatch.register("relu_conv2d", "reference", relu_conv2d_reference)


def relu_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """conv2d(relu(x), weight) with 'same' padding; weight (C_out, C_in, k, k), no bias."""
    return dispatch.call("relu_conv2d", x, weight, stride)
