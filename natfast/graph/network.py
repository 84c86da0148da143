"""The supernet's sampled path as a fixed sequence of operations, whatever the genotype.

Stem, cell preprocessing and classifier do not depend on the genotype: they are plain ATen ops
here, recorded by autograd the same way every step. Each cell is one op whose backend reads the
slot table: `triton` (kernels/graph_forward.py, kernels/graph_backward.py: one autograd.Function per
cell with an explicit backward, no host reads, so the step can be captured) or `reference`
(natfast/graph/reference.py on the table read on the host: the plain PyTorch the kernels are
checked against). Every cell runs, including cells and nodes the genotype leaves unused: what they
compute reaches neither the logits nor a gradient (their gradients are exact zeros), so a step does
the same work for every genotype.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ..ops.layers import FactorizedReduce
from . import reference
from .buffers import CellBuffers, CellShape

EPS = 1e-5


def _bn(t: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(t, None, None, training=True, eps=EPS)


def preprocess(module, x: torch.Tensor) -> torch.Tensor:
    """A cell's preprocessing (ReLUConvBN 1x1 or FactorizedReduce, BN without affine) in ATen ops."""
    r = F.relu(x)
    if isinstance(module, FactorizedReduce):
        return _bn(torch.cat([F.conv2d(r[:, :, ::2, ::2], module.conv_a), F.conv2d(r[:, :, 1::2, 1::2], module.conv_b)], 1))
    return _bn(F.conv2d(r, module.weight))


class _TritonCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, x1, bufs, flat, slots):
        from .triton_forward import cell_forward
        ctx.bufs, ctx.flat, ctx.slots = bufs, flat, slots
        # A new tensor object over the persistent buffer: autograd attaches this step's history to it.
        return cell_forward(bufs, x0, x1, flat.data, slots).view_as(bufs.out)

    @staticmethod
    def backward(ctx, d_out):
        from .triton_backward import cell_backward
        d_x0, d_x1 = cell_backward(ctx.bufs, d_out.contiguous(), ctx.flat.data, ctx.flat.grad, ctx.slots)
        return d_x0, d_x1, None, None, None


class GraphNetwork:
    """Logits of the architecture in `table` (natfast/graph/table.py's SlotTable) for a batch."""

    def __init__(self, supernet, flat, table, backend: str):
        if backend not in ("triton", "reference"):
            raise ValueError(f"graph backend must be 'triton' or 'reference', got {backend!r}")
        self.supernet, self.flat, self.table, self.backend = supernet, flat, table, backend
        self.param_at: Dict[int, torch.Tensor] = {o: p for p, o in zip(flat.params, flat.offsets)}
        self._buffers: Dict[tuple, List[CellBuffers]] = {}

    def buffers(self, x: torch.Tensor) -> List[CellBuffers]:
        """Each cell's buffers for this batch shape, allocated once."""
        key = (tuple(x.shape), x.device)
        if key not in self._buffers:
            net, out = self.supernet, []
            n, h, w = x.shape[0], x.shape[2], x.shape[3]
            for cell in net.cells:
                if cell.reduction and (h % 2 or w % 2):
                    raise ValueError(f"a reduction cell needs even feature maps, got {h}x{w} (input {tuple(x.shape)})")
                shape = CellShape(n, cell.channels, net.family.num_nodes, h, w, cell.reduction)
                out.append(CellBuffers(shape, x.device))
                h, w = shape.h, shape.w
            self._buffers[key] = out
        return self._buffers[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        net = self.supernet
        s0 = s1 = _bn(F.conv2d(x, net.stem.conv.weight, None, 1, 1))
        bufs = self.buffers(x) if self.backend == "triton" else None
        rows = self.table.slots.cpu().tolist() if self.backend == "reference" else None
        for i, cell in enumerate(net.cells):
            x0, x1 = preprocess(cell.pre0, s0), preprocess(cell.pre1, s1)
            if bufs is not None:
                out = _TritonCell.apply(x0, x1, bufs[i], self.flat, self.table.slots[i])
            else:
                out = reference.cell_forward(x0, x1, self._weight_at, rows[i], cell.reduction)
            s0, s1 = s1, self._output_nodes_only(out, i)
        return F.linear(s1.mean((2, 3)), net.classifier.weight, net.classifier.bias)

    def _output_nodes_only(self, out: torch.Tensor, layer: int) -> torch.Tensor:
        """The cell output with the nodes outside the genotype's output (concat, loose ends) zeroed:
        the same for every genotype, where the supernet concatenates fewer nodes."""
        n, width, h, w = out.shape
        nodes = self.table.outputs.shape[1]
        mask = self.table.outputs[layer].view(1, nodes, 1, 1, 1)
        return (out.view(n, nodes, width // nodes, h, w) * mask).view(n, width, h, w)

    def _weight_at(self, offset: int, shape) -> torch.Tensor:
        return self.param_at[offset].view(shape)
