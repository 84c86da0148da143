"""A sampled architecture as data: fixed-shape int32 tables that a captured step reads on the device.

A step captured once and replayed for every sampled genotype cannot branch in host code on which op
an edge runs. Instead the host writes, each step, a small table built from the cell plan (through
the executor's packing of it, natfast/executor.py): per cell its preprocessing and output blocks,
per slot its op kind, window, input node, stride, and where its weights sit in the flat parameter
buffer (natfast/flat_params.py). The shapes depend only on the supernet, never on the genotype.

    table = ArchTable(supernet, flat)
    cells, slots = table.write(genotype)    # device tensors, valid for this step

`write` fills a pinned host buffer and copies it without blocking into one of two device buffers,
alternating, so a step's copy never waits on the step before, which may still read the other.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .cell_plan import KINDS, OpSpec
from .executor import compile_arch
from .flat_params import FlatParameters
from .genotype import Genotype
from .supernet import Supernet

# Per slot; `w0..w3`: flat offsets of the op's weight tensors in its module's order (-1: none).
SLOT_FIELDS = ("kind", "kernel", "dilation", "source", "target", "stride", "reuse", "w0", "w1", "w2", "w3")
# Per cell, then one column per output block (-1 past the last): pre0 is 0 unused, 1 conv 1x1,
# 2 FactorizedReduce (weights pre0_w0, pre0_w1); pre1 is 0 unused or 1 conv 1x1 (pre1_w0); `slots`:
# how many slot rows run (the rest are padding of kind null); `outputs`: how many output blocks.
CELL_FIELDS = ("pre0", "pre0_w0", "pre0_w1", "pre1", "pre1_w0", "slots", "outputs")
MAX_WEIGHTS = 4   # sep_conv: depthwise, pointwise, twice


class ArchTable:
    def __init__(self, supernet: Supernet, flat: FlatParameters, buffers: int = 2):
        self.supernet, self.flat = supernet, flat
        self.layers, self.nodes = supernet.layers, supernet.family.num_nodes
        device = flat.data.device
        pin = device.type == "cuda"
        shapes = ((self.layers, len(CELL_FIELDS) + self.nodes), (self.layers, 2 * self.nodes, len(SLOT_FIELDS)))
        self._host = [tuple(torch.empty(s, dtype=torch.int32, pin_memory=pin) for s in shapes) for _ in range(buffers)]
        self._device = [tuple(torch.empty(s, dtype=torch.int32, device=device) for s in shapes)
                        for _ in range(buffers)]
        self._copied = [None] * buffers   # the CUDA event of each buffer's last copy
        self._next = 0
        self._flat_index = {id(p): i for i, p in enumerate(flat.params)}

    def pack(self, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cells, slots) of `genotype` as CPU int32 tensors of the fixed shapes."""
        plan = compile_arch(self.supernet, genotype)
        offset = self._offsets(plan.params)
        cells = torch.full((self.layers, len(CELL_FIELDS) + self.nodes), -1, dtype=torch.int32)
        slots = torch.full((self.layers, 2 * self.nodes, len(SLOT_FIELDS)), -1, dtype=torch.int32)
        slots[:, :, 0] = 0                                   # padding rows run nothing (kind null)
        rows = plan.slots.tolist()
        for layer, (pre0, p0, pre1, p1, first, end, n_out, *outputs) in enumerate(plan.cells.tolist()):
            cells[layer, :len(CELL_FIELDS)] = torch.tensor(
                [pre0, offset(p0), offset(p0 + 1) if pre0 == 2 else -1, pre1, offset(p1), end - first, n_out])
            cells[layer, len(CELL_FIELDS):] = torch.tensor(outputs[:self.nodes])
            for j, (kind, kernel, dilation, source, target, stride, param, reuse) in enumerate(rows[first:end]):
                weights = OpSpec("", KINDS[kind]).weights(stride) if param >= 0 else 0   # reused: none
                slots[layer, j, :7] = torch.tensor([kind, kernel, dilation, source, target, stride,
                                                    reuse - first if reuse >= 0 else -1])
                for k in range(weights):
                    slots[layer, j, 7 + k] = offset(param + k)
        return cells, slots

    def write(self, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor]:
        """This step's tables on the device (the other buffer may still be read by the last step)."""
        i, self._next = self._next, (self._next + 1) % len(self._host)
        host, device = self._host[i], self._device[i]
        if self._copied[i] is not None:
            self._copied[i].synchronize()   # its copy two steps ago (long done in practice)
        for h, packed in zip(host, self.pack(genotype)):
            h.copy_(packed)
        for d, h in zip(device, host):
            d.copy_(h, non_blocking=True)
        if device[0].is_cuda:
            self._copied[i] = torch.cuda.Event()
            self._copied[i].record()
        return device

    def _offsets(self, params: List[torch.Tensor]):
        """position in the executor's parameter list -> offset in the flat buffer (-1 stays -1)."""
        index, flat_offsets = self._flat_index, self.flat.offsets

        def offset(position: int) -> int:
            if position < 0:
                return -1
            try:
                return flat_offsets[index[id(params[position])]]
            except KeyError:
                raise ValueError("the supernet has a parameter that is not among the flat ones") from None
        return offset
