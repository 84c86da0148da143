"""The device buffers of one cell of the graph engine, allocated once per (batch, cell shape) and
reused by every step, so a captured step replays with the same addresses whatever the genotype.

Slot s = 2 * (t - 2) + i is the i-th edge into node t (natfast/graph/table.py). NS = 2 * B slots.
All activations are float32, contiguous, NCHW.

Forward (written by kernels/graph_forward.py, read by the backward):
    x      (2, N, C, Hin, Win)    the two preprocessed cell inputs (node 0, node 1)
    out    (N, B*C, H, W)         the cell output; node t is channels (t-2)*C : (t-1)*C
    a1     (NS, N, C, H, W)       sep/dil: first depthwise output (before the pointwise)
    b1     (NS, N, C, H, W)       the tensor the slot's first BN normalises: sep/dil the first
                                  pointwise output, conv the k x k conv output, pools the pool
                                  output, FactorizedReduce the concatenation of its two halves
    a2     (NS, N, C, H, W)       sep: second depthwise output (its input is relu(BN(b1)))
    b2     (NS, N, C, H, W)       sep: second pointwise output
    stats  (2, NS, 2, C)          [j, s] = (mean, rstd) of BN j+1 of slot s over (N, H, W),
                                  biased variance, eps 1e-5
Node t's source x of a slot: x[src] for src < 2 (size Hin x Win), else out's block src - 2 (H x W).
H = Hin // 2 in a reduction cell, else Hin. Slots whose kind is null leave their rows untouched
(contents undefined: never read).

Backward (kernels/graph_backward.py):
    dx     (2, N, C, Hin, Win)    the returned gradients of x0, x1
    dnode  (B, N, C, H, W)        total gradient of each intermediate node
    dsrc   (NS, N, C, Hin, Win)   the gradient slot s sends to its source: a contiguous
                                  (N, C, HS, WS) tensor at the start of row s, HS x WS the source's
                                  size (H x W for an intermediate node)
    g1     (NS, N, C, H, W)       gradients flowing back through the slot's stages
    g2     (NS, N, C, H, W)       sep: the middle depthwise's input gradient; max_pool: each output's
                                  argmax tap (as a float)
Lanes (scoring many architectures at once, forward only): `CellBuffers(shape, device, lanes=L)`
gives every forward buffer a leading lane axis (x (L, 2, N, C, Hin, Win), out (L, N, B*C, H, W),
...), lane l's copy at l times one lane's size, and no backward buffers.

The kernels keep their partial sums (BN-backward means, weight gradients, reduced in a fixed order:
no float atomics) in scratch they attach to these buffers on first use (`forward_partials`,
`backward_partials`), so a step allocates nothing after the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


# In Triton's CPU interpreter every op of every program is Python over numpy: few programs with big
# tiles make an engine step many times faster (same launch sequence, other grids and tile sizes).
# The cell-level kernel tests set GPU_TILES_IN_INTERPRETER to run the GPU's tiling there too.
GPU_TILES_IN_INTERPRETER = False


def big_tiles(t: torch.Tensor) -> bool:
    """Whether launches on `t`'s device use the interpreter's big tiles (CPU tensors run only there)."""
    return t.device.type == "cpu" and not GPU_TILES_IN_INTERPRETER


@dataclass
class CellShape:
    n: int
    c: int
    nodes: int
    h_in: int
    w_in: int
    reduction: bool

    @property
    def h(self) -> int:
        return self.h_in // 2 if self.reduction else self.h_in

    @property
    def w(self) -> int:
        return self.w_in // 2 if self.reduction else self.w_in

    @property
    def slots(self) -> int:
        return 2 * self.nodes


class CellBuffers:
    def __init__(self, shape: CellShape, device, lanes: Optional[int] = None):
        """lanes=None: one architecture, forward and backward buffers (training); lanes=L: a lane
        axis of L, forward buffers only (scoring)."""
        if lanes is not None and lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        s = shape
        n, c, ns = s.n, s.c, s.slots
        lead = () if lanes is None else (lanes,)
        empty = lambda *dims: torch.empty(lead + dims, device=device)
        self.shape, self.lanes, self.lane_axis = s, lanes or 1, lanes is not None
        self.x = empty(2, n, c, s.h_in, s.w_in)
        self.out = empty(n, s.nodes * c, s.h, s.w)
        self.a1, self.b1, self.a2, self.b2 = (empty(ns, n, c, s.h, s.w) for _ in range(4))
        self.stats = empty(2, ns, 2, c)
        if self.lane_axis:
            return
        self.dx = empty(2, n, c, s.h_in, s.w_in)
        self.dnode = empty(s.nodes, n, c, s.h, s.w)
        self.dsrc = empty(ns, n, c, s.h_in, s.w_in)
        self.g1, self.g2 = empty(ns, n, c, s.h, s.w), empty(ns, n, c, s.h, s.w)
