"""A sampled architecture as a fixed-shape int32 table, for engines whose launch sequence must not
depend on the genotype (natfast/graph/).

Row `2 * (t - 2) + i` of a cell's block is the i-th edge into node t, always: the position of a slot
never depends on the genotype, so a kernel launched for node t reads rows 2(t-2) and 2(t-2)+1.
A row says what the slot computes; everything is taken from the cell plan (natfast/cell_plan.py),
which decides liveness, known zeros and strides: a slot the plan does not compute has kind null.

    kind      natfast.cell_plan.KINDS index (0 null, 1 skip, 2 max_pool, 3 avg_pool, 4 sep_conv,
              5 dil_conv, 6 conv); skip at stride 2 is FactorizedReduce
    kernel, dilation, source, stride
    w0..w3    offsets in the flat parameter buffer of the op's weight tensors, in its module's
              parameter order (sep_conv: first depthwise, first pointwise, second depthwise,
              second pointwise; dil_conv: depthwise, pointwise; conv: weight; FactorizedReduce:
              conv_a, conv_b); -1 where the op has fewer

A slot repeating its node's other slot (same op, same input) has the same offsets: engines compute
both, which equals the supernet's computing once and summing twice.

Beside the slots, per cell and node, whether the node is part of the cell's output (the genotype's
concat, or the loose ends of ENAS cells, known zeros left out): the engines keep every node in a
fixed-width output and multiply the others by zero, which equals the supernet's concatenating only
the output nodes and reading them with the matching weight columns.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch

from ..cell_plan import KINDS, edge_key, plan_network
from ..genotype import Genotype, normalize

SLOT_FIELDS = ("kind", "kernel", "dilation", "source", "stride", "w0", "w1", "w2", "w3")
KIND = {name: i for i, name in enumerate(KINDS)}
MAX_WEIGHTS = 4


def check_two_edges_per_node(genotype: Genotype, nodes: int) -> None:
    for cell, edges in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        targets = [t for _, _, t in edges]
        if targets != [t for t in range(2, nodes + 2) for _ in range(2)]:
            raise ValueError(f"the graph engine needs two edges into each of nodes 2..{nodes + 1}, in order; "
                             f"the {cell} cell has targets {targets}")


def pack_outputs(supernet, genotype: Genotype) -> torch.Tensor:
    """(layers, nodes) float32 on the CPU: 1 where node t (column t - 2) is in the cell's output."""
    genotype = normalize(genotype)
    network = plan_network(genotype, supernet.family, supernet.layers)
    outputs = torch.zeros(supernet.layers, supernet.family.num_nodes)
    for layer, run in enumerate(network.cells):
        outputs[layer, list(run.output_blocks)] = 1.0
    return outputs


def pack_slots(supernet, genotype: Genotype, offset_of: Dict[int, int]) -> torch.Tensor:
    """(layers, 2 * nodes, len(SLOT_FIELDS)) int32 on the CPU. `offset_of` maps id(parameter) to its
    offset in the flat buffer (natfast.flat_params.FlatParameters)."""
    genotype = normalize(genotype)
    nodes = supernet.family.num_nodes
    check_two_edges_per_node(genotype, nodes)
    network = plan_network(genotype, supernet.family, supernet.layers)
    rows = torch.full((supernet.layers, 2 * nodes, len(SLOT_FIELDS)), -1, dtype=torch.int32)
    rows[:, :, 0] = KIND["null"]
    for layer, run in enumerate(network.cells):
        cell = supernet.cells[layer]
        for slot in run.computed:
            spec = slot.spec
            params = list(cell.edges[edge_key(slot.source, slot.target)][slot.op].parameters())
            offsets = [offset_of[id(p)] for p in params]
            rows[layer, slot.index] = torch.tensor(
                [KIND[spec.kind], spec.kernel, spec.dilation, slot.source, slot.stride]
                + offsets + [-1] * (MAX_WEIGHTS - len(offsets)), dtype=torch.int32)
    return rows


class SlotTable:
    """This step's slot table, used-parameter flags and output nodes in fixed device buffers (a
    captured step reads them at fixed addresses). The host packs into one of two pinned buffers, alternating, and
    copies without blocking on the step's stream: the copy runs after the previous step (which
    read the device buffers) and the host never waits for it, nor overwrites a pinned buffer whose
    copy may still be pending (it waits on that copy's event, two steps old).

    lanes=None: one architecture (training): slots (layers, 2B, 9), used (parameters,), outputs
    (layers, B); `write(genotype)`. lanes=L: L architectures scored at once: slots (layers, L, 2B, 9)
    and outputs (layers, L, B), so that one cell's table is one contiguous block; no used flags
    (scoring updates nothing); `write([genotype] * L)`."""

    def __init__(self, supernet, flat, device: torch.device, buffers: int = 2, lanes: Optional[int] = None):
        if lanes is not None and lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.supernet, self.flat, self.lanes = supernet, flat, lanes
        self._packer = _Packer(supernet, flat)
        lead = () if lanes is None else (lanes,)
        layers, nodes = supernet.layers, supernet.family.num_nodes
        shapes = [((layers,) + lead + (2 * nodes, len(SLOT_FIELDS)), torch.int32),
                  ((layers,) + lead + (nodes,), torch.float32)]
        if lanes is None:
            shapes.insert(1, ((len(flat.params),), torch.uint8))
        device = torch.device(device)
        pin = device.type == "cuda"
        self._host = [tuple(torch.empty(shape, dtype=dtype, pin_memory=pin) for shape, dtype in shapes)
                      for _ in range(buffers)]
        self._device = tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in shapes)
        self.slots, self.outputs = self._device[0], self._device[-1]
        self.used = self._device[1] if lanes is None else None
        self._copied: List = [None] * buffers
        self._next = 0

    def pack(self, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(slots, used, outputs) on the CPU."""
        return _cached_pack(self, normalize(genotype))

    def _packed(self, genotypes) -> Tuple[torch.Tensor, ...]:
        if self.lanes is None:
            return self.pack(genotypes)
        genotypes = list(genotypes)
        if len(genotypes) != self.lanes:
            raise ValueError(f"this table has {self.lanes} lanes, got {len(genotypes)} architectures")
        packs = [self.pack(g) for g in genotypes]
        return tuple(torch.stack([p[i] for p in packs], 1) for i in (0, 2))

    def write(self, genotypes) -> None:
        """One genotype, or (with lanes) one per lane."""
        i, self._next = self._next, (self._next + 1) % len(self._host)
        if self._copied[i] is not None:
            self._copied[i].synchronize()
        for host, packed, device in zip(self._host[i], self._packed(genotypes), self._device):
            host.copy_(packed)
            device.copy_(host, non_blocking=True)
        if self.slots.is_cuda:
            self._copied[i] = torch.cuda.Event()
            self._copied[i].record()


class _Packer:
    """pack_slots, pack_outputs and the used flags of natfast.executor.parameters_read in one walk
    of the genotype's cell plan, with every (cell, edge, op)'s parameters looked up once: a fresh
    genotype is packed in about a tenth of the time of the three (which each plan the network
    and walk the modules' parameters again), host time that would otherwise stall every step.
    tests/test_graph_engine.py checks the three are what this gives."""

    def __init__(self, supernet, flat):
        self.supernet, self.nodes = supernet, supernet.family.num_nodes
        self.index_of = {id(p): i for i, p in enumerate(flat.params)}
        self.offset_of = {id(p): o for p, o in zip(flat.params, flat.offsets)}
        self.params = len(flat.params)
        self._edges: Dict[tuple, Tuple[List[int], List[int]]] = {}
        indices = lambda module: [self.index_of[id(p)] for p in module.parameters()]
        self.stem = indices(supernet.stem)
        self.pre = [(indices(cell.pre0), indices(cell.pre1)) for cell in supernet.cells]
        self.classifier_weight = self.index_of[id(supernet.classifier.weight)]
        self.classifier_bias = self.index_of[id(supernet.classifier.bias)]

    def _edge(self, layer: int, slot) -> Tuple[List[int], List[int]]:
        """(flat offsets, parameter indices) of the op module `slot` runs in cell `layer`."""
        key = (layer, slot.source, slot.target, slot.op)
        if key not in self._edges:
            module = self.supernet.cells[layer].edges[edge_key(slot.source, slot.target)][slot.op]
            params = list(module.parameters())
            self._edges[key] = ([self.offset_of[id(p)] for p in params], [self.index_of[id(p)] for p in params])
        return self._edges[key]

    def pack(self, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net, nodes = self.supernet, self.nodes
        self.supernet.check_archs([genotype])
        check_two_edges_per_node(genotype, nodes)
        network = plan_network(genotype, net.family, net.layers)
        null = [KIND["null"]] + [-1] * (len(SLOT_FIELDS) - 1)
        rows = [[null] * (2 * nodes) for _ in range(net.layers)]
        outputs = [[0.0] * nodes for _ in range(net.layers)]
        used = bytearray(self.params)
        live = network.live_cells
        for layer, run in enumerate(network.cells):
            for slot in run.computed:
                spec = slot.spec
                offsets, indices = self._edge(layer, slot)
                rows[layer][slot.index] = ([KIND[spec.kind], spec.kernel, spec.dilation, slot.source, slot.stride]
                                           + offsets + [-1] * (MAX_WEIGHTS - len(offsets)))
                if live[layer]:
                    for i in indices:
                        used[i] = 1
            for block in run.output_blocks:
                outputs[layer][block] = 1.0
            if live[layer]:
                for i in (i for side in (0, 1) if run.input_used[side] for i in self.pre[layer][side]):
                    used[i] = 1
        for i in self.stem if network.stem_live else ():
            used[i] = 1
        used[self.classifier_bias] = 1
        used[self.classifier_weight] = int(bool(network.classifier_blocks))
        return (torch.tensor(rows, dtype=torch.int32), torch.frombuffer(used, dtype=torch.uint8),
                torch.tensor(outputs))


@functools.lru_cache(maxsize=256)
def _cached_pack(table: SlotTable, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return table._packer.pack(genotype)
