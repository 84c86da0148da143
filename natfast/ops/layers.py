"""The candidate operations as modules (DARTS definitions), shared by the supernet and the
standalone network. Every module's forward takes `(x, groups=None)`: `groups` lists the sizes of
the sample groups that get separate BN statistics (multi-architecture batches); the standalone
network passes None.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fused
from .conv import relu_conv2d
from .depthwise import relu_dwconv
from .norm import group_batch_norm
from .pointwise import conv1x1
from .pool import pool2d

Groups = Optional[Sequence[int]]


class Norm(nn.Module):
    """BN: affine=False with batch statistics in the supernet, a regular BatchNorm2d otherwise."""

    def __init__(self, channels: int, affine: bool, track_running_stats: bool = True):
        super().__init__()
        self.searching = not affine and not track_running_stats
        self.bn = None if self.searching else nn.BatchNorm2d(channels, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        if self.searching:
            return group_batch_norm(x, groups)
        if groups is not None and len(groups) > 1:
            raise ValueError("per-group BN statistics need affine=False, track_running_stats=False (the supernet's BN)")
        return self.bn(x)


def _init_conv(shape) -> nn.Parameter:
    w = torch.empty(shape)
    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    return nn.Parameter(w)


class ReLUConvBN(nn.Module):
    """ReLU, k x k convolution, BN. Also the cell preprocessing (k=1); `channel_index` lets the
    supernet feed a subset of the input channels (a cell output made of fewer nodes)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track: bool = True):
        super().__init__()
        self.stride, self.kernel = stride, kernel
        self.weight = _init_conv((c_out, c_in, kernel, kernel))
        self.norm = Norm(c_out, affine, track)

    def forward(self, x: torch.Tensor, groups: Groups = None, channel_index: Optional[torch.Tensor] = None,
                relu_applied: bool = False) -> torch.Tensor:
        """`relu_applied`: x is already relu(input) (the supernet shares one ReLU between the two
        cells that preprocess the same cell output)."""
        w = self.weight if channel_index is None else self.weight.index_select(1, channel_index)
        if self.kernel == 1 and self.stride == 1 and self.norm.searching:
            return fused.conv1x1_bn(x, w, groups, relu_input=not relu_applied)
        if self.kernel > 1 and self.norm.searching:
            # ReLU, convolution and BN: one forward-only pass when scoring where a backend has it.
            return fused.relu_conv_bn(x, w, self.stride, groups)
        if self.kernel == 1:
            y = conv1x1(x if relu_applied else F.relu(x), w, self.stride)
        else:
            y = relu_conv2d(x, w, self.stride)   # relu_applied only comes with kernel 1 (preprocessing)
        return self.norm(y, groups)

    def forward_parts(self, parts: Sequence[torch.Tensor], groups: Groups = None,
                      channel_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """forward(torch.cat(parts, dim=1)) for the supernet's preprocessing, the parts (a cell
        output's nodes) read in place by the fused kernel, without a concatenation or a ReLU pass."""
        if self.kernel != 1 or self.stride != 1 or not self.norm.searching:
            raise ValueError("forward_parts is the supernet's cell preprocessing: a stride-1 1x1 convolution with its BN")
        w = self.weight if channel_index is None else self.weight.index_select(1, channel_index)
        return fused.cat_conv1x1_bn(parts, w, groups, relu_input=True)


class DilConv(nn.Module):
    """ReLU, depthwise k x k (stride, dilation), pointwise 1x1, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int, affine: bool, track: bool = True):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self.depthwise = _init_conv((c_in, 1, kernel, kernel))
        self.pointwise = _init_conv((c_out, c_in, 1, 1))
        self.norm = Norm(c_out, affine, track)

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        if self.norm.searching:
            # The whole op as one dispatched op: one forward-only pass per sample when scoring where a
            # backend has it, else relu_dwconv then the fused pointwise conv + BN.
            return fused.dil_conv_bn(x, self.depthwise, self.pointwise, self.stride, self.dilation, groups)
        y = relu_dwconv(x, self.depthwise, self.stride, self.dilation)
        return self.norm(conv1x1(y, self.pointwise), groups)


class SepConv(nn.Module):
    """Two DilConv(dilation 1) blocks; only the first has the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track: bool = True):
        super().__init__()
        self.first = DilConv(c_in, c_in, kernel, stride, 1, affine, track)
        self.second = DilConv(c_in, c_out, kernel, 1, 1, affine, track)

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        first, second = self.first, self.second
        if first.norm.searching and second.norm.searching:
            # When scoring, a backend may hand the first half's normalisation to the second half.
            return fused.sep_conv_bn(x, first.depthwise, first.pointwise, second.depthwise, second.pointwise,
                                     first.stride, groups)
        return second(first(x, groups), groups)


class Pool(nn.Module):
    """3x3/5x5 max or average pooling; in the supernet followed by BN(affine=False)."""

    def __init__(self, kind: str, kernel: int, stride: int, channels: int, with_bn: bool, affine: bool, track: bool = True):
        super().__init__()
        self.kind, self.kernel, self.stride = kind, kernel, stride
        self.norm = Norm(channels, affine, track) if with_bn else None

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        if self.norm is not None and self.norm.searching:
            # The supernet's pool + BN(affine=False) as one fused op (one pass over the input).
            return fused.pool_bn(x, self.kind, self.kernel, self.stride, groups)
        y = pool2d(x, self.kind, self.kernel, self.stride)
        return y if self.norm is None else self.norm(y, groups)


class FactorizedReduce(nn.Module):
    """ReLU, two stride-2 1x1 convolutions on inputs shifted by one pixel, concat, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool, track: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.conv_a = _init_conv((c_out // 2, c_in, 1, 1))
        self.conv_b = _init_conv((c_out // 2, c_in, 1, 1))
        self.norm = Norm(c_out, affine, track)

    def forward(self, x: torch.Tensor, groups: Groups = None, channel_index: Optional[torch.Tensor] = None,
                relu_applied: bool = False) -> torch.Tensor:
        if relu_applied:
            wa, wb = self._weights(channel_index)
            y = torch.cat([conv1x1(x[:, :, ::2, ::2], wa), conv1x1(x[:, :, 1::2, 1::2], wb)], dim=1)
            return self.norm(y, groups)
        return self.forward_parts([x], groups, channel_index)

    def _weights(self, channel_index: Optional[torch.Tensor]):
        wa, wb = self.conv_a, self.conv_b
        if channel_index is not None:
            wa, wb = wa.index_select(1, channel_index), wb.index_select(1, channel_index)
        return wa, wb

    def forward_parts(self, parts: Sequence[torch.Tensor], groups: Groups = None,
                      channel_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """forward(torch.cat(parts, dim=1)). A stride-2 1x1 conv of x (or of x shifted by one
        pixel) only reads the even (odd) pixels: those are picked from each part first, then the
        ReLU, a quarter of the concatenation's and the ReLU's work each."""
        wa, wb = self._weights(channel_index)
        if self.norm.searching:
            # BN normalises each channel on its own, so BN(cat(a, b)) = cat(BN(a), BN(b)): each half
            # is one ReLU + 1x1 conv + BN, which the CPU kernel does reading the parts in place (both
            # halves in one pass when scoring).
            return fused.factorized_reduce_bn(parts, wa, wb, groups)
        even = _cat_channels([F.relu(p[:, :, ::2, ::2]) for p in parts])
        odd = _cat_channels([F.relu(p[:, :, 1::2, 1::2]) for p in parts])
        return self.norm(torch.cat([conv1x1(even, wa), conv1x1(odd, wb)], dim=1), groups)


def _cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=1)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        return x


class FactorizedConv(nn.Module):
    """ReLU, a 1 x k then a k x 1 convolution (the stride split between them: (1, s) then (s, 1)),
    BN: NAO's conv_1x3_3x1 and conv_1x7_7x1, as the NAT authors' operations.py builds them."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool, track: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.row = _init_conv((channels, channels, 1, kernel))
        self.column = _init_conv((channels, channels, kernel, 1))
        self.norm = Norm(channels, affine, track)

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        k, s = self.kernel, self.stride
        y = F.conv2d(F.relu(x), self.row, None, (1, s), (0, k // 2))
        return self.norm(F.conv2d(y, self.column, None, (s, 1), (k // 2, 0)), groups)


class UnpaddedPool(nn.Module):
    """2x2 max or average pooling without padding (NAO's): it fits only stride-2 edges on even
    feature maps, where it halves them as every other op of a reduction does."""

    def __init__(self, kind: str, kernel: int, stride: int):
        super().__init__()
        if stride != 2 or kernel != 2:
            raise ValueError(f"{kind}_pool_{kernel}x{kernel} has no padding: it fits only stride-2 edges (a reduction "
                             f"cell's edges from its inputs), where it halves the feature map; with stride {stride} it "
                             f"would change the map's size")
        self.kind, self.kernel, self.stride = kind, kernel, stride

    def forward(self, x: torch.Tensor, groups: Groups = None) -> torch.Tensor:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"{self.kind}_pool_2x2 needs even feature maps to halve them, got "
                             f"{x.shape[2]}x{x.shape[3]} (choose an image size that stays even)")
        if self.kind == "max":
            return F.max_pool2d(x, 2, 2)
        return F.avg_pool2d(x, 2, 2)


# The supernet's candidates (natfast/cell_plan.py catalogues how each runs).
OPERATIONS = (
    "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3", "avg_pool_5x5", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    "conv_1x1", "conv_3x3", "conv_5x5", "null",
)
# The other ops of the NAT authors' operations.py, which their published architectures (NAONet and
# its transformations) use: standalone networks only (cell_plan's catalogue, the supernet engine
# and the compiled executor do not know them).
# Their conv_7x1_1x7 is built exactly as their conv_1x7_7x1 (1 x 7 first), and so is it here.
EVALUATION_OPERATIONS = (
    "max_pool_2x2", "avg_pool_2x2", "sep_conv_1x1", "sep_conv_7x7", "dil_conv_1x1",
    "conv_1x3_3x1", "conv_1x7_7x1", "conv_7x1_1x7",
)


def make_op(name: str, channels: int, stride: int, affine: bool, pool_bn: bool, track: bool = True) -> nn.Module:
    """Build candidate `name` (channels in = out). `null` has no module: it is never executed."""
    if name not in OPERATIONS + EVALUATION_OPERATIONS or name == "null":
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS[:-1] + EVALUATION_OPERATIONS)}")
    c = channels
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine, track)
    if name in ("conv_1x3_3x1", "conv_1x7_7x1", "conv_7x1_1x7"):
        return FactorizedConv(c, 3 if name == "conv_1x3_3x1" else 7, stride, affine, track)
    if name.startswith(("max_pool_", "avg_pool_")):
        kind, k = name[:3], int(name[-1])
        return UnpaddedPool(kind, k, stride) if k == 2 else Pool(kind, k, stride, c, pool_bn, affine, track)
    if name.startswith("sep_conv_"):
        return SepConv(c, c, int(name[-1]), stride, affine, track)
    if name.startswith("dil_conv_"):
        return DilConv(c, c, int(name[-1]), stride, 2, affine, track)
    return ReLUConvBN(c, c, int(name[-1]), stride, affine, track)
