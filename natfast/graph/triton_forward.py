"""The forward of one graph-engine cell as a fixed sequence of Triton launches (kernels:
kernels/graph_forward.py), writing what natfast.graph.reference.fill_forward_buffers defines.

The genotype is data: the kernels read the cell's slot table on the device, so the launches (kernels,
grids, constexprs, tensor arguments) are the same for every table and nothing is read back to the
host. Per node: 5 launches (first stage, b1 statistics, sep's second stage, b2 statistics, node sum).

With lanes (buffers with a lane axis, natfast/graph/buffers.py) every launch gets a last grid axis
of the lane count and `slots` one of its own: (lanes, 2B, 9).

Scratch: the per-tile BN partials live in `bufs.forward_partials` ([lanes,] 2 slots, tiles, (mean,
M2), padded channels), allocated on the first call for these buffers and reused after, so a step
allocates nothing.
"""
from __future__ import annotations

import importlib

import torch
import triton

from ..ops.backends.triton import load_kernels
from .buffers import CellBuffers, big_tiles

# CP x BP, elements a program holds per tensor: 32 registers a thread at the default 4 warps.
# (Launch options such as num_warps are left out: tests/triton_compile_check.py records kernel
# arguments only.)
PIXELS_PER_TILE = 4096
MAX_BP = 128
PARTIALS_PER_BLOCK = 4096  # TB x CP: partials the statistics kernel reads at a time
# The interpreter's big tiles (natfast/graph/buffers.py: big_tiles).
INTERPRETER_PIXELS_PER_TILE = 32768
INTERPRETER_MAX_BP = 2048


def tiling(c: int, pixels: int, interpreted: bool = False):
    """(CP, BP, tiles, TB): padded channels (>= 16 for tl.dot), output pixels per program, programs
    per slot, partial rows per statistics step."""
    cp = max(16, triton.next_power_of_2(c))
    per_tile, max_bp = ((INTERPRETER_PIXELS_PER_TILE, INTERPRETER_MAX_BP) if interpreted
                        else (PIXELS_PER_TILE, MAX_BP))
    bp = max(16, min(max_bp, per_tile // cp, triton.next_power_of_2(pixels)))
    tiles = triton.cdiv(pixels, bp)
    tb = max(1, min(triton.next_power_of_2(tiles), PARTIALS_PER_BLOCK // cp))
    return cp, bp, tiles, tb


def _kernels():
    load_kernels()  # makes `natfast.kernels` importable from a source tree too
    return importlib.import_module("natfast.kernels.graph_forward")


def _partials(bufs: CellBuffers, cp: int, tiles: int) -> torch.Tensor:
    shape = (bufs.lanes, 2, tiles, 2, cp)
    part = getattr(bufs, "forward_partials", None)
    if part is None or part.shape != shape or part.device != bufs.out.device:
        part = bufs.forward_partials = torch.empty(shape, device=bufs.out.device)
    return part


def cell_forward(bufs: CellBuffers, x0: torch.Tensor, x1: torch.Tensor, flat: torch.Tensor,
                 slots: torch.Tensor) -> torch.Tensor:
    """bufs.out (N, B*C, H, W), the cell output, after filling bufs.x, a1, b1, a2, b2 and stats.
    `slots` is the cell's (2B, 9) int32 table on the device, `flat` the float32 parameters.
    With lanes: x0, x1 (L, N, C, Hin, Win) (or (1, ...): the same input for every lane), slots
    (L, 2B, 9), out (L, N, B*C, H, W)."""
    s, lanes = bufs.shape, bufs.lanes
    want = (lanes, s.slots, 9) if bufs.lane_axis else (s.slots, 9)
    if slots.dtype != torch.int32 or not slots.is_contiguous() or tuple(slots.shape) != want:
        raise ValueError(f"slots must be a contiguous {want} int32 table, got {tuple(slots.shape)} {slots.dtype}")
    if flat.dtype != torch.float32 or not flat.is_contiguous():
        raise ValueError(f"flat must be contiguous float32, got {flat.dtype}")
    g = _kernels()
    # The engine may hand in bufs.x itself (preprocessing writing there): then there is nothing to copy.
    xs = bufs.x.transpose(0, 1) if bufs.lane_axis else bufs.x
    for i, x in enumerate((x0, x1)):
        if x.data_ptr() != xs[i].data_ptr():
            xs[i].copy_(x)
    pixels = s.n * s.h * s.w
    cp, bp, tiles, tb = tiling(s.c, pixels, big_tiles(bufs.out))
    part = _partials(bufs, cp, tiles)
    dims = dict(C=s.c, H=s.h, W=s.w, CP=cp, BP=bp)
    io = dict(H_IN=s.h_in, W_IN=s.w_in, NODES=s.nodes)
    for node in range(s.nodes):
        slot0 = 2 * node
        g._first_kernel[(2, tiles, lanes)](bufs.x, bufs.out, bufs.a1, bufs.b1, part, flat, slots, slot0, s.n,
                                           tiles, **io, **dims)
        g._stats_kernel[(2, lanes)](part, bufs.stats, slots, slot0, s.n, tiles, J=0, NS=s.slots, **dims, TB=tb)
        g._second_kernel[(2, tiles, lanes)](bufs.b1, bufs.a2, bufs.b2, bufs.stats, part, flat, slots, slot0, s.n,
                                            tiles, NODES=s.nodes, **dims)
        g._stats_kernel[(2, lanes)](part, bufs.stats, slots, slot0, s.n, tiles, J=1, NS=s.slots, **dims, TB=tb)
        g._node_kernel[(tiles, lanes)](bufs.x, bufs.out, bufs.b1, bufs.b2, bufs.stats, slots, slot0, s.n,
                                       **io, **dims)
    return bufs.out
