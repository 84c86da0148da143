"""How a sampled cell runs: the one description every engine reads.

A genotype names, for each intermediate node t of a cell, two edges (op, f, t). How such a cell runs
follows from a few rules, written here once and nowhere else:

* the op catalogue: each candidate's kind (pool, skip, sep_conv, dil_conv, conv, null), window and
  dilation, and how many weight tensors it has at a stride (`OP_SPECS`);
* the stride rule: in a reduction cell, edges leaving the two input nodes have stride 2 (a skip
  there is a FactorizedReduce, with weights);
* liveness: a node runs only if it reaches the cell output through non-null edges; null edges never
  run;
* the output nodes: the `concat` list (fully-concat families) or the nodes no edge reads (loose-end);
* known zeros (the supernet only, whose BN has no affine shift and maps zeros to zeros): a node none
  of whose live edges reads a non-zero node is zero, is never computed, and its channel block is
  dropped from the weights of whatever reads the cell output (`NetworkPlan`);
* an edge repeated on a node (same op, same input, as NAONet has) is computed once in the supernet,
  whose two copies share weights.

`CellPlan` is built once per (family, cell genes, reduction); `NetworkPlan` once per (supernet shape,
genotype). Consumers: the Python supernet engine (natfast/engine.py), the standalone network
(natfast/network.py), the compiled executor (natfast/executor.py packs a NetworkPlan into integer
tensors; csrc/executor/executor.cpp follows them and keeps no rule of its own).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

from .genotype import Family, Genotype, output_nodes

# ----------------------------------------------------------------------------- the op catalogue
# The kinds of op the engines know how to run. csrc/executor/executor.cpp's `enum Kind` lists the
# same names in the same order; natfast/executor.py checks that they agree when it loads.
KINDS = ("null", "skip", "max_pool", "avg_pool", "sep_conv", "dil_conv", "conv")


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: str
    kernel: int = 0
    dilation: int = 1

    @property
    def kind_id(self) -> int:
        return KINDS.index(self.kind)

    def weights(self, stride: int) -> int:
        """How many weight tensors the op has (in its module's parameter order)."""
        if self.kind == "skip":
            return 0 if stride == 1 else 2      # identity, or FactorizedReduce (conv_a, conv_b)
        return {"sep_conv": 4, "dil_conv": 2, "conv": 1}.get(self.kind, 0)   # pools, null: none


def _spec(name: str) -> OpSpec:
    if name in ("null", "skip_connect"):
        return OpSpec(name, "null" if name == "null" else "skip")
    prefix, size = name.rsplit("_", 1)
    kernel = int(size.split("x")[0])
    kind = {"max_pool": "max_pool", "avg_pool": "avg_pool", "sep_conv": "sep_conv", "dil_conv": "dil_conv",
            "conv": "conv"}[prefix]
    return OpSpec(name, kind, kernel, 2 if kind == "dil_conv" else 1)


# The candidate operations of every supernet family (natfast.genotype's primitive sets draw on these).
OPERATIONS = (
    "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3", "avg_pool_5x5", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    "conv_1x1", "conv_3x3", "conv_5x5", "null",
)
OP_SPECS: Dict[str, OpSpec] = {name: _spec(name) for name in OPERATIONS}


def spec(op: str) -> OpSpec:
    try:
        return OP_SPECS[op]
    except KeyError:
        raise ValueError(f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}") from None


# ----------------------------------------------------------------------------- one cell
def reduction_layers(layers: int) -> Tuple[int, int]:
    """The reduction cells of an L-cell network: at L/3 and 2L/3."""
    return layers // 3, 2 * layers // 3


def edge_stride(reduction: bool, source: int) -> int:
    """Edges leaving a reduction cell's input nodes halve the resolution."""
    return 2 if reduction and source < 2 else 1


def edge_key(source: int, target: int) -> str:
    """Where an edge's candidate ops sit in a supernet cell (`SuperCell.edges[edge_key(f, t)][op]`)."""
    return f"{source}_{target}"


def live_nodes(edges: Sequence[Tuple[str, int, int]], outputs: Sequence[int]) -> FrozenSet[int]:
    """Nodes that reach the cell output through non-null edges (outputs included)."""
    live = set(outputs)
    for op, f, t in sorted(edges, key=lambda e: -e[2]):
        if t in live and op != "null":
            live.add(f)
    return frozenset(live)


@dataclass(frozen=True)
class Slot:
    """One edge of a cell: its op, the node it reads, the node it feeds, its stride, and whether it
    runs (not null, and its target reaches the output)."""
    index: int
    op: str
    source: int
    target: int
    stride: int
    live: bool

    @property
    def spec(self) -> OpSpec:
        return OP_SPECS[self.op]


@dataclass(frozen=True)
class CellPlan:
    reduction: bool
    num_nodes: int
    slots: Tuple[Slot, ...]
    outputs: Tuple[int, ...]          # the nodes concatenated into the cell's output, in order
    live: FrozenSet[int]              # nodes that reach an output (input nodes included)

    def into(self, target: int) -> Tuple[Slot, ...]:
        """The live slots feeding node `target`, in genotype order."""
        return tuple(s for s in self.slots if s.live and s.target == target)

    def needs_input(self, node: int) -> bool:
        """Whether input node 0 or 1 (the preprocessed previous cell outputs) is read at all."""
        return node in self.live


@functools.lru_cache(maxsize=4096)
def plan_cell(edges: Tuple[Tuple[str, int, int], ...], concat: Optional[Tuple[int, ...]], family: Family,
              reduction: bool) -> CellPlan:
    """The plan of one cell. Arguments are hashable (tuples) so plans are built once."""
    outputs = output_nodes(edges, concat, family)
    live = live_nodes(edges, outputs)
    slots = tuple(Slot(j, op, f, t, edge_stride(reduction, f), op != "null" and t in live)
                  for j, (op, f, t) in enumerate(edges))
    return CellPlan(reduction, family.num_nodes, slots, tuple(outputs), live)


def cell_genes(genotype: Genotype, reduction: bool) -> Tuple[Tuple[Tuple[str, int, int], ...], Tuple[int, ...]]:
    if reduction:
        edges, concat = genotype.reduce, genotype.reduce_concat
    else:
        edges, concat = genotype.normal, genotype.normal_concat
    return tuple(tuple(e) for e in edges), tuple(concat)


def plan_of(genotype: Genotype, family: Family, reduction: bool) -> CellPlan:
    """The plan of the normal (or reduction) cell of `genotype`."""
    edges, concat = cell_genes(genotype, reduction)
    return plan_cell(edges, concat, family, reduction)


# ----------------------------------------------------------------------------- a supernet's path
@dataclass(frozen=True)
class CellRun:
    """What one cell of a supernet's sampled path computes, known zeros taken out.

    `input_used[i]` (i = 0, 1): whether input node i is needed and not known zero; `input_blocks[i]`:
    the node blocks of the feeding cell's output that are non-zero, i.e. which input channel blocks of
    the preprocessing weights are used (None: the stem's output, all channels).
    `computed`: the slots that run, in genotype order; `reuse[j]` names, for a slot repeating an
    earlier one of the same node (same op, same input), that slot's index (its value is reused).
    `zero`: the nodes known to be zero (or not needed). `output_blocks`: the non-zero output nodes'
    blocks (node - 2), in concat order."""
    plan: CellPlan
    reduction_prev: bool
    input_used: Tuple[bool, bool]
    input_blocks: Tuple[Optional[Tuple[int, ...]], Optional[Tuple[int, ...]]]
    zero: FrozenSet[int]
    computed: Tuple[Slot, ...]
    reuse: Dict[int, int]
    output_blocks: Tuple[int, ...]


@dataclass(frozen=True)
class NetworkPlan:
    """A genotype's sampled path through an L-cell supernet (stem -> cells -> classifier)."""
    cells: Tuple[CellRun, ...]

    @property
    def live_cells(self) -> Tuple[bool, ...]:
        """Whether each cell's output reaches the logits: the last cell's does, and a cell's does
        when a live cell reads it (the next one as input 1, the one after as input 0)."""
        live = [False] * len(self.cells)
        live[-1] = True
        for i in range(len(self.cells) - 1, -1, -1):
            for source, used in ((i - 1, self.cells[i].input_used[1]), (i - 2, self.cells[i].input_used[0])):
                if live[i] and used and source >= 0:
                    live[source] = True
        return tuple(live)

    @property
    def stem_live(self) -> bool:
        """Whether a live cell reads the stem's output (cell 0 as either input, cell 1 as input 0)."""
        live = self.live_cells
        return (live[0] and any(self.cells[0].input_used)) or (
            len(self.cells) > 1 and live[1] and self.cells[1].input_used[0])

    @property
    def classifier_blocks(self) -> Tuple[int, ...]:
        """The last cell's non-zero output blocks: the classifier's used input channel blocks
        (empty: every output is zero and the logits are the bias)."""
        return self.cells[-1].output_blocks


@functools.lru_cache(maxsize=1024)
def plan_network(genotype: Genotype, family: Family, layers: int) -> NetworkPlan:
    """The sampled path of `genotype` (normalised: hashable tuples) through an L-cell supernet."""
    reductions = reduction_layers(layers)
    blocks_pp: Optional[Tuple[int, ...]] = None   # the stem: all channels, never zero
    blocks_p: Optional[Tuple[int, ...]] = None
    cells = []
    reduction_prev = False
    for index in range(layers):
        reduction = index in reductions
        plan = plan_of(genotype, family, reduction)
        feeding_blocks = (blocks_pp, blocks_p)
        used = tuple(plan.needs_input(i) and feeding_blocks[i] != () for i in (0, 1))
        # Known zeros: inputs not needed or all-zero, then nodes whose live edges read only zeros.
        zero = {i for i in (0, 1) if not used[i]}
        computed, reuse = [], {}
        for t in range(2, plan.num_nodes + 2):
            feeding = [s for s in plan.into(t) if s.source not in zero]
            if t not in plan.live or not feeding:
                zero.add(t)
                continue
            first = {}   # the supernet's weights are per edge (source, target, op): reuse within a node
            for s in feeding:
                key = (s.op, s.source)
                if key in first:
                    reuse[s.index] = first[key]
                else:
                    first[key] = s.index
                computed.append(s)
        output_blocks = tuple(s - 2 for s in plan.outputs if s not in zero)
        cells.append(CellRun(plan, reduction_prev, used, feeding_blocks, frozenset(zero), tuple(computed), reuse,
                             output_blocks))
        blocks_pp, blocks_p, reduction_prev = blocks_p, output_blocks, reduction
    return NetworkPlan(tuple(cells))
