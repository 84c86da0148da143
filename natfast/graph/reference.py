"""What one cell of the graph engine computes, in plain PyTorch (autograd gives its backward).

The Triton cell (natfast/graph/triton_cell.py, kernels/graph_*.py) must equal this. Inputs: the two
preprocessed cell inputs x0, x1 (N, C, Hin, Win), the weights (by flat offset), and the cell's block of
the slot table (natfast/graph/table.py) read on the host. Output: the cell output (N, B*C, H, W),
node t in channels (t-2)*C : (t-1)*C; a node whose slots are all null is zero.

Per slot, on x = node(source) (x0, x1, or an earlier node of the output):
    sep_conv   dw(relu x, w0, k, stride) -> pw(w1) -> BN -> relu -> dw(w2, k, 1) -> pw(w3) -> BN
    dil_conv   dw(relu x, w0, k, stride, dilation 2) -> pw(w1) -> BN
    conv       conv(relu x, w0, k, stride) -> BN
    max/avg    pool(x, k, stride; the average excludes the padding) -> BN
    skip       x at stride 1; at stride 2 BN(cat(pw(relu x[::2, ::2], w0), pw(relu x[1::2, 1::2], w1)))
    null       nothing
All padding is 'same' (dilation * (k - 1) / 2); BN uses batch statistics, eps 1e-5, no affine.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..ops.pool import pool2d_reference
from .table import KIND

EPS = 1e-5


def _bn(t: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(t, None, None, training=True, eps=EPS)


WeightAt = Callable[[int, Tuple[int, ...]], torch.Tensor]


def flat_weights(flat: torch.Tensor) -> WeightAt:
    """Weights as views of a flat buffer (differentiable if `flat` is)."""
    return lambda offset, shape: flat[offset: offset + math.prod(shape)].view(shape)


def slot_forward(x: torch.Tensor, row: Sequence[int], weight_at: WeightAt) -> torch.Tensor:
    kind, k, dilation, _, stride, *offsets = row
    c = x.shape[1]

    def weight(i, shape):
        return weight_at(offsets[i], shape)

    if kind == KIND["skip"]:
        if stride == 1:
            return x
        r = F.relu(x)
        a = F.conv2d(r[:, :, ::2, ::2], weight(0, (c // 2, c, 1, 1)))
        b = F.conv2d(r[:, :, 1::2, 1::2], weight(1, (c // 2, c, 1, 1)))
        return _bn(torch.cat([a, b], 1))
    if kind in (KIND["max_pool"], KIND["avg_pool"]):
        return _bn(pool2d_reference(x, "max" if kind == KIND["max_pool"] else "avg", k, stride))
    if kind == KIND["conv"]:
        return _bn(F.conv2d(F.relu(x), weight(0, (c, c, k, k)), None, stride, k // 2))
    if kind in (KIND["sep_conv"], KIND["dil_conv"]):
        pad = dilation * (k - 1) // 2
        y = F.conv2d(F.relu(x), weight(0, (c, 1, k, k)), None, stride, pad, dilation, c)
        y = _bn(F.conv2d(y, weight(1, (c, c, 1, 1))))
        if kind == KIND["sep_conv"]:
            y = F.conv2d(F.relu(y), weight(2, (c, 1, k, k)), None, 1, k // 2, 1, c)
            y = _bn(F.conv2d(y, weight(3, (c, c, 1, 1))))
        return y
    raise ValueError(f"slot kind {kind} is not one the graph engine runs")


def cell_forward(x0: torch.Tensor, x1: torch.Tensor, weight_at: WeightAt, rows: Sequence[Sequence[int]],
                 reduction: bool) -> torch.Tensor:
    """The cell output (N, B*C, H, W), differentiable in x0, x1 and the weights; `weight_at(offset,
    shape)` gives the weight tensor at a flat offset (`flat_weights(flat)`, or the supernet's own
    parameters)."""
    n, c, h, w = x0.shape
    if reduction:
        h, w = h // 2, w // 2
    nodes = [x0, x1]
    for t in range(2, len(rows) // 2 + 2):
        parts = [slot_forward(nodes[row[3]], row, weight_at) for row in rows[2 * (t - 2): 2 * (t - 1)]
                 if row[0] != KIND["null"]]
        total = x0.new_zeros(n, c, h, w)
        for p in parts:
            total = total + p
        nodes.append(total)
    return torch.cat(nodes[2:], 1)


def _stats(t: torch.Tensor) -> torch.Tensor:
    """(mean, rstd) per channel over (N, H, W), as BN computes them: shape (2, C)."""
    var, mean = torch.var_mean(t, dim=(0, 2, 3), unbiased=False)
    return torch.stack([mean, torch.rsqrt(var + EPS)])


@torch.no_grad()
def fill_forward_buffers(bufs, x0: torch.Tensor, x1: torch.Tensor, flat: torch.Tensor,
                         rows: Sequence[Sequence[int]]) -> None:
    """Write what the Triton forward saves (natfast/graph/buffers.py) the plain way: the reference
    the forward kernels are checked against, and the input the backward kernels are tested on."""
    weight_at = flat_weights(flat)
    bufs.x[0].copy_(x0)
    bufs.x[1].copy_(x1)
    c = x0.shape[1]
    nodes = [bufs.x[0], bufs.x[1]]
    out = bufs.out
    for t in range(2, len(rows) // 2 + 2):
        total = torch.zeros_like(out[:, :c])
        for s in range(2 * (t - 2), 2 * (t - 1)):
            row = rows[s]
            kind, k, dilation, src, stride, *offsets = row
            if kind == KIND["null"]:
                continue
            x = nodes[src]
            if kind == KIND["skip"] and stride == 1:
                total += x
                continue
            if kind == KIND["skip"]:
                r = F.relu(x)
                b1 = torch.cat([F.conv2d(r[:, :, ::2, ::2], weight_at(offsets[0], (c // 2, c, 1, 1))),
                                F.conv2d(r[:, :, 1::2, 1::2], weight_at(offsets[1], (c // 2, c, 1, 1)))], 1)
            elif kind in (KIND["max_pool"], KIND["avg_pool"]):
                b1 = pool2d_reference(x, "max" if kind == KIND["max_pool"] else "avg", k, stride)
            elif kind == KIND["conv"]:
                b1 = F.conv2d(F.relu(x), weight_at(offsets[0], (c, c, k, k)), None, stride, k // 2)
            else:
                pad = dilation * (k - 1) // 2
                bufs.a1[s] = F.conv2d(F.relu(x), weight_at(offsets[0], (c, 1, k, k)), None, stride, pad, dilation, c)
                b1 = F.conv2d(bufs.a1[s], weight_at(offsets[1], (c, c, 1, 1)))
            bufs.b1[s] = b1
            bufs.stats[0, s] = _stats(b1)
            y = _bn(b1)
            if kind == KIND["sep_conv"]:
                bufs.a2[s] = F.conv2d(F.relu(y), weight_at(offsets[2], (c, 1, k, k)), None, 1, k // 2, 1, c)
                bufs.b2[s] = F.conv2d(bufs.a2[s], weight_at(offsets[3], (c, c, 1, 1)))
                bufs.stats[1, s] = _stats(bufs.b2[s])
                y = _bn(bufs.b2[s])
            total += y
        out[:, (t - 2) * c:(t - 1) * c] = total
        nodes.append(out[:, (t - 2) * c:(t - 1) * c])
