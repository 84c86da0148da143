"""The backward of one graph-engine cell as a fixed sequence of Triton launches (kernels:
kernels/graph_backward.py), the gradient of natfast.graph.reference.cell_forward from the buffers
its forward saved (natfast/graph/buffers.py).

The genotype is data: the kernels read the cell's slot table on the device, so the launches (kernels,
grids, constexprs, tensor arguments) are the same for every table and nothing is read back to the
host. Per node, last to first: 5 launches (head, last BN + pointwise, sep's middle depthwise / max
pool's argmax, sep's first BN + pointwise, first stage into the source); per cell 2 more (input
gradients, weight gradients into flat_grad): 5B + 2 for B nodes.

A slot's source gradient dsrc[s] is a contiguous (N, C, HS, WS) tensor at the start of the slot's
row, HS x WS the source's size (Hin x Win for x0/x1, H x W for a node).

Scratch, in `bufs.backward_partials`, allocated on the first call for these buffers and reused after
(a step allocates nothing): BN-backward partials (NS, G, 2, CP); weight-gradient partials
(NS, G, WROW), a slot's four weights at columns 0, WOFF1, WOFF2, WOFF3, each sized for the largest op
with that weight; and a conv's weight gradient in CS partial rows (NS, CS, CONVROW), summed by
programs per tap rather than per tile group, whose partial rows would each hold 25 C^2 floats for a
5x5 conv.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Tuple

import torch
import triton

from ..cell_plan import OP_SPECS
from ..ops.backends.triton import load_kernels
from .buffers import CellBuffers, big_tiles

PIXELS_PER_TILE = 1024  # BLOCK x CP: elements a program holds per tensor
INTERPRETER_PIXELS_PER_TILE = 32768   # the interpreter's big tiles (natfast/graph/buffers.py: big_tiles)
MAX_GROUPS = 128         # programs per slot; each loops over its tiles and writes one partial row
MAX_CONV_SPLITS = 8      # programs per conv tap: each sums >= TILES_PER_CONV_SPLIT tiles, in one partial row
TILES_PER_CONV_SPLIT = 16
MAX_BLOCK_E = 4096       # weight elements per program of the reduction
KMAX = max(spec.kernel for spec in OP_SPECS.values())
KKP = triton.next_power_of_2(KMAX * KMAX)  # depthwise taps, padded: rows of a program's tap accumulator


@dataclass(frozen=True)
class Tiling:
    cp: int      # channels padded to a power of two >= 16 (tl.dot's smallest side)
    block: int   # pixels per tile
    groups: int  # programs per slot (G)
    woff: Tuple[int, int, int]  # columns of w1, w2, w3 in a partial row
    wrow: int
    conv_splits: int  # CS
    convrow: int


def tiling(c: int, pixels: int, interpreted: bool = False) -> Tiling:
    cp = max(16, triton.next_power_of_2(c))
    per_tile = INTERPRETER_PIXELS_PER_TILE if interpreted else PIXELS_PER_TILE
    block = max(16, min(per_tile // cp, triton.next_power_of_2(pixels)))
    tiles = triton.cdiv(pixels, block)
    groups = min(tiles, MAX_GROUPS)
    # w0: depthwise C*k*k or FactorizedReduce C/2*C; w1, w3: pointwise C*C (FactorizedReduce's w1:
    # C/2*C); w2: depthwise C*k*k
    sizes = (max(c * KMAX * KMAX, c // 2 * c), c * c, c * KMAX * KMAX, c * c)
    woff = (sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2])
    conv_splits = max(1, min(MAX_CONV_SPLITS, tiles // TILES_PER_CONV_SPLIT))
    return Tiling(cp, block, groups, woff, sum(sizes), conv_splits, c * c * KMAX * KMAX)


@dataclass
class _Partials:
    tiling: Tiling
    bn: torch.Tensor       # (NS, G, 2, CP)
    weights: torch.Tensor  # (NS, G, WROW)
    conv: torch.Tensor     # (NS, CS, CONVROW)


def _kernels():
    load_kernels()  # makes `natfast.kernels` importable from a source tree too
    return importlib.import_module("natfast.kernels.graph_backward")


def _partials(bufs: CellBuffers) -> _Partials:
    s = bufs.shape
    t = tiling(s.c, s.n * s.h * s.w, big_tiles(bufs.out))
    part = getattr(bufs, "backward_partials", None)
    device = bufs.out.device
    if part is None or part.tiling != t or part.bn.device != device:
        part = bufs.backward_partials = _Partials(
            t, torch.zeros(s.slots, t.groups, 2, t.cp, device=device),
            torch.zeros(s.slots, t.groups, t.wrow, device=device),
            torch.zeros(s.slots, t.conv_splits, t.convrow, device=device))
    return part


def cell_backward(bufs: CellBuffers, d_out: torch.Tensor, flat: torch.Tensor, flat_grad: torch.Tensor,
                  slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(d_x0, d_x1), views of bufs.dx, given the cell output's gradient d_out (N, B*C, H, W); adds
    each slot's weight gradients into flat_grad (the layout of `flat`). `slots` is the cell's
    (2B, 9) int32 table on the device."""
    s = bufs.shape
    if slots.dtype != torch.int32 or not slots.is_contiguous() or tuple(slots.shape) != (s.slots, 9):
        raise ValueError(f"slots must be a contiguous ({s.slots}, 9) int32 table, "
                         f"got {tuple(slots.shape)} {slots.dtype}")
    for name, t in (("flat", flat), ("flat_grad", flat_grad)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32, got {t.dtype}")
    if flat_grad.shape != flat.shape:
        raise ValueError(f"flat_grad {tuple(flat_grad.shape)} must have flat's shape {tuple(flat.shape)}")
    if tuple(d_out.shape) != (s.n, s.nodes * s.c, s.h, s.w):
        raise ValueError(f"d_out must be {(s.n, s.nodes * s.c, s.h, s.w)}, got {tuple(d_out.shape)}")
    d_out = d_out.contiguous()
    k = _kernels()
    part = _partials(bufs)
    p = part.tiling
    grid = (p.groups, 2)
    sizes = dict(B=s.nodes, C=s.c, H=s.h, W=s.w, CP=p.cp, G=p.groups, BLOCK=p.block)
    inputs = dict(HIN=s.h_in, WIN=s.w_in)
    w1, w2, w3 = p.woff
    for t in range(s.nodes + 1, 1, -1):
        k._head_kernel[grid](slots, d_out, bufs.dsrc, bufs.dnode, bufs.b1, bufs.b2, bufs.stats, part.bn, t, s.n,
                             **sizes, **inputs)
        k._bn_pw_kernel[grid](slots, bufs.dnode, bufs.g1, bufs.b1, bufs.b2, bufs.a1, bufs.a2, bufs.stats, part.bn,
                              flat, part.weights, t, s.n, PHASE=0, WROW=p.wrow, WOFF1=w1, WOFF3=w3, **sizes)
        k._dw_mid_kernel[grid](slots, bufs.g1, bufs.g2, bufs.b1, bufs.stats, bufs.x, bufs.out, flat, part.bn,
                               part.weights, t, s.n, WROW=p.wrow, WOFF2=w2, KKP=KKP, **sizes, **inputs)
        k._bn_pw_kernel[grid](slots, bufs.g2, bufs.g1, bufs.b1, bufs.b2, bufs.a1, bufs.a2, bufs.stats, part.bn,
                              flat, part.weights, t, s.n, PHASE=1, WROW=p.wrow, WOFF1=w1, WOFF3=w3, **sizes)
        k._to_src_kernel[(p.groups + KMAX * KMAX * p.conv_splits, 2)](
            slots, bufs.g1, bufs.g2, bufs.x, bufs.out, bufs.dsrc, flat, part.weights, part.conv, t, s.n,
            WROW=p.wrow, WOFF1=w1, CS=p.conv_splits, CONVROW=p.convrow, KKP=KKP, **sizes, **inputs)
    k._input_grad_kernel[grid](slots, bufs.dsrc, bufs.dx, s.n, B=s.nodes, C=s.c, CP=p.cp, G=p.groups,
                               BLOCK=p.block, **inputs)
    block_e = min(MAX_BLOCK_E, triton.next_power_of_2(p.convrow))  # a conv's weight is the largest
    k._weight_reduce_kernel[(4 * s.slots, triton.cdiv(p.convrow, block_e))](
        slots, part.weights, part.conv, flat_grad, B=s.nodes, C=s.c, G=p.groups, WROW=p.wrow, WOFF1=w1, WOFF2=w2,
        WOFF3=w3, CS=p.conv_splits, CONVROW=p.convrow, BLOCK_E=block_e)
    return bufs.dx[0], bufs.dx[1]
