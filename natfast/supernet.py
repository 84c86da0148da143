"""The weight-sharing supernet's modules.

Every edge f -> t of every cell holds all candidate operations (BN affine=False, batch
statistics). An architecture selects one op on two edges per node: how such a sampled cell runs is
natfast/cell_plan.py's; running one or many architectures through these modules is natfast/engine.py's
(`Supernet.run`, `forward`, `forward_shared`, `forward_routed`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from . import engine
from .cell_plan import edge_key, edge_stride, reduction_layers
from .genotype import Family, Genotype
from .inputs import check_images  # noqa: F401  (re-exported: part of this module's API)
from .ops.layers import FactorizedReduce, Norm, ReLUConvBN, make_op

__all__ = ["Supernet", "SuperCell", "Stem", "check_images", "edge_key", "reduction_layers"]


class Stem(nn.Module):
    """conv 3x3 (3 -> c_out) + BN."""

    def __init__(self, c_out: int, affine: bool, track: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, c_out, 3, padding=1, bias=False)
        self.norm = Norm(c_out, affine, track)

    def forward(self, x: torch.Tensor, groups=None) -> torch.Tensor:
        return self.norm(self.conv(x), groups)


class SuperCell(nn.Module):
    def __init__(self, primitives: Sequence[str], num_nodes: int, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction, self.num_nodes, self.channels = reduction, num_nodes, c
        self.pre0 = (FactorizedReduce(c_pp, c, False, False) if reduction_prev
                     else ReLUConvBN(c_pp, c, 1, 1, False, False))
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, False, False)
        self.edges = nn.ModuleDict()
        for t in range(2, num_nodes + 2):
            for f in range(t):
                self.edges[edge_key(f, t)] = nn.ModuleDict(
                    {op: make_op(op, c, edge_stride(reduction, f), affine=False, pool_bn=True, track=False)
                     for op in primitives if op != "null"})


class Supernet(nn.Module):
    # Distinct architectures run through the cells together when the engine does not concatenate
    # (on a CPU): all of them at once hold every one's activations at the same time (20 lanes of
    # the 4 x 4 policy step: 3 GB, and the page faults of fresh memory cost more than sharing
    # saves); a few at a time keep the working set small.
    LANES_AT_ONCE = 4
    # When scoring, a node's sum may be written into one of its edge outputs (see _run_cell);
    # False: always into a new tensor (bench/derive_breakdown.py compares the two).
    SUMS_IN_PLACE = True

    def __init__(self, family: Family, channels: int = 20, layers: int = 8, num_classes: int = 10,
                 stem_multiplier: int = 3):
        super().__init__()
        if not family.searchable:
            raise ValueError(f"family {family.name} is for standalone networks only: no supernet kernel has "
                             f"all its ops")
        self.family, self.channels, self.layers = family, channels, layers
        self.primitives = tuple(family.primitives)
        b = family.num_nodes
        c_stem = stem_multiplier * channels
        self.stem = Stem(c_stem, affine=False, track=False)
        self.cells = nn.ModuleList()
        c_pp, c_p, c = c_stem, c_stem, channels
        reduction_prev = False
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            if reduction:
                c *= 2
            self.cells.append(SuperCell(self.primitives, b, c_pp, c_p, c, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, b * c, reduction
        self.classifier = nn.Linear(c_p, num_classes)

    # ----------------------------------------------------------------- public API
    def forward(self, x: torch.Tensor, arch: Genotype) -> torch.Tensor:
        """The sampled path: logits of one architecture on the whole batch."""
        return self.run([x], [(0, arch)])[0]

    def forward_shared(self, x: torch.Tensor, archs: Sequence[Genotype]) -> List[torch.Tensor]:
        """Logits of each architecture on the same samples, shared values computed once."""
        return self.run([x], [(0, a) for a in archs])

    def forward_routed(self, x: torch.Tensor, archs: Sequence[Genotype], sizes: Sequence[int]) -> torch.Tensor:
        """Group g of the batch (sizes[g] samples, in order) runs archs[g]; logits in batch order."""
        if sum(sizes) != x.shape[0] or len(sizes) != len(archs):
            raise ValueError(f"routing sizes {list(sizes)} do not match batch {x.shape[0]} and {len(archs)} architectures")
        parts = list(torch.split(x, list(sizes)))
        return torch.cat(self.run(parts, list(enumerate(archs))))

    # ----------------------------------------------------------------- engine
    def run(self, inputs: Sequence[torch.Tensor], lanes: Sequence[Tuple[int, Genotype]],
            concatenate: Optional[bool] = None, lanes_at_once: Optional[int] = None) -> List[torch.Tensor]:
        """Run each lane (input index, architecture); returns each lane's logits (natfast/engine.py)."""
        return engine.run(self, inputs, lanes, concatenate, lanes_at_once)

    def check_archs(self, archs: Sequence[Genotype]) -> None:
        prims, b = set(self.primitives), self.family.num_nodes
        for g in archs:
            if not isinstance(g, Genotype):
                raise TypeError(f"an architecture must be a Genotype, got {type(g).__name__} "
                                f"(natfast.get_named(name)[0] or natfast.load_arch(path)[0] give one)")
            for edges in (g.normal, g.reduce):
                for op, f, t in edges:
                    if op not in prims or not (0 <= f < t <= b + 1):
                        raise ValueError(f"edge {(op, f, t)} does not fit this supernet "
                                         f"({self.family.name}, {b} nodes, ops {self.primitives})")
