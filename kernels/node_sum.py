"""Fused BN-apply + sum (+ ReLU) of a cell node (semantics: natfast/ops/node_sum.py):

    out = sum_i (x_i - mean_i[g, c]) * rstd_i[g, c],     relu_out = max(out, 0)

Statistics (G, C) are given. Forward: one elementwise launch per MAX_INPUTS inputs (a node has
2 to 5). Backward, with dy = d_out + d_relu * (out > 0):
    dx_i = dy * rstd_i,   d_mean_i = -rstd_i * sum(dy),   d_rstd_i = sum(dy * (x_i - mean_i))
(sums per (group, channel) over the group's samples and pixels). Launch 1 runs over chunks of each
group-channel (as the BN statistics do), writes dx_i and one row of partial sums per chunk;
reduce.sum_rows adds the rows in order, so the statistics' gradients are deterministic.
"""
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .batchnorm import _apply_block, _split, group_tables
from .reduce import sum_rows

MAX_INPUTS = 4  # inputs one launch reads; more run in several launches


@triton.jit
def _normed(x_ptr, mean_ptr, rstd_ptr, gc, addr, ok):
    x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    return (x - tl.load(mean_ptr + gc).to(tl.float32)) * tl.load(rstd_ptr + gc).to(tl.float32)


@triton.jit
def _fwd_kernel(x0, x1, x2, x3, m0, m1, m2, m3, r0, r1, r2, r3, out_ptr, relu_ptr, sample_group_ptr, C, HW,
                K: tl.constexpr, ACC: tl.constexpr, RELU: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    gc = tl.load(sample_group_ptr + plane // C) * C + plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HW
    addr = plane.to(tl.int64) * HW + offs
    acc = _normed(x0, m0, r0, gc, addr, ok)
    if K > 1:
        acc += _normed(x1, m1, r1, gc, addr, ok)
    if K > 2:
        acc += _normed(x2, m2, r2, gc, addr, ok)
    if K > 3:
        acc += _normed(x3, m3, r3, gc, addr, ok)
    if ACC:  # a later launch of a node with more than MAX_INPUTS inputs
        acc += tl.load(out_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + addr, acc.to(out_ptr.dtype.element_ty), mask=ok)
    if RELU:
        tl.store(relu_ptr + addr, tl.maximum(acc, 0.0).to(relu_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _input_grad(x_ptr, dx_ptr, mean_ptr, rstd_ptr, gc, addr, ok, dy):
    """Stores dx = dy * rstd; returns dy * (x - mean) per lane."""
    x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    tl.store(dx_ptr + addr, (dy * tl.load(rstd_ptr + gc).to(tl.float32)).to(dx_ptr.dtype.element_ty), mask=ok)
    return dy * (x - tl.load(mean_ptr + gc).to(tl.float32))


@triton.jit
def _store_partials(part_ptr, gc, s, i, KT, GC, mean_ptr, rstd_ptr, sum_dy, sum_dyx):
    # Row s of the partials holds [d_mean of every input, d_rstd of every input], each G*C long.
    row = part_ptr + s.to(tl.int64) * 2 * KT * GC
    tl.store(row + i * GC + gc, -tl.load(rstd_ptr + gc).to(tl.float32) * sum_dy)
    tl.store(row + (KT + i) * GC + gc, sum_dyx)


@triton.jit
def _grad_kernel(dout_ptr, drelu_ptr, out_ptr, x0, x1, x2, x3, dx0, dx1, dx2, dx3, m0, m1, m2, m3,
                 r0, r1, r2, r3, part_ptr, starts_ptr, sizes_ptr, C, HW, CHUNK, GC, KT, FIRST,
                 K: tl.constexpr, HAS_DOUT: tl.constexpr, HAS_DRELU: tl.constexpr, BLOCK: tl.constexpr):
    gc = tl.program_id(0)
    s = tl.program_id(1)
    g = gc // C
    c = gc % C
    start = tl.load(starts_ptr + g)
    total = tl.load(sizes_ptr + g) * HW
    sum_dy = tl.zeros([BLOCK], dtype=tl.float32)
    t0 = tl.zeros([BLOCK], dtype=tl.float32)
    t1 = tl.zeros([BLOCK], dtype=tl.float32)
    t2 = tl.zeros([BLOCK], dtype=tl.float32)
    t3 = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        e = s * CHUNK + off + tl.arange(0, BLOCK)
        ok = e < total
        addr = ((start + e // HW) * C + c).to(tl.int64) * HW + e % HW
        dy = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_DOUT:
            dy += tl.load(dout_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        if HAS_DRELU:
            positive = tl.load(out_ptr + addr, mask=ok, other=0.0) > 0
            dy += tl.where(positive, tl.load(drelu_ptr + addr, mask=ok, other=0.0).to(tl.float32), 0.0)
        sum_dy += dy
        t0 += _input_grad(x0, dx0, m0, r0, gc, addr, ok, dy)
        if K > 1:
            t1 += _input_grad(x1, dx1, m1, r1, gc, addr, ok, dy)
        if K > 2:
            t2 += _input_grad(x2, dx2, m2, r2, gc, addr, ok, dy)
        if K > 3:
            t3 += _input_grad(x3, dx3, m3, r3, gc, addr, ok, dy)
    total_dy = tl.sum(sum_dy, axis=0)
    _store_partials(part_ptr, gc, s, FIRST, KT, GC, m0, r0, total_dy, tl.sum(t0, axis=0))
    if K > 1:
        _store_partials(part_ptr, gc, s, FIRST + 1, KT, GC, m1, r1, total_dy, tl.sum(t1, axis=0))
    if K > 2:
        _store_partials(part_ptr, gc, s, FIRST + 2, KT, GC, m2, r2, total_dy, tl.sum(t2, axis=0))
    if K > 3:
        _store_partials(part_ptr, gc, s, FIRST + 3, KT, GC, m3, r3, total_dy, tl.sum(t3, axis=0))


def _four(tensors: Sequence[torch.Tensor]):
    """Exactly MAX_INPUTS pointers: unused slots repeat the first (the kernel never reads them)."""
    return list(tensors) + [tensors[0]] * (MAX_INPUTS - len(tensors))


def forward(xs: Sequence[torch.Tensor], means: Sequence[torch.Tensor], rstds: Sequence[torch.Tensor],
            groups: Sequence[int], relu: bool):
    """xs (N, C, ...) contiguous, same shape and dtype; means, rstds (G, C) contiguous.
    Returns (out, relu(out) or None)."""
    n, c = xs[0].shape[:2]
    hw = xs[0][0, 0].numel()
    _, _, sample_group = group_tables(tuple(groups), xs[0].device)
    out = torch.empty_like(xs[0])
    relu_out = torch.empty_like(out) if relu else None
    block = _apply_block(hw)
    for first in range(0, len(xs), MAX_INPUTS):
        part = slice(first, first + MAX_INPUTS)
        last = first + MAX_INPUTS >= len(xs)
        _fwd_kernel[(n * c, triton.cdiv(hw, block))](
            *_four(xs[part]), *_four(means[part]), *_four(rstds[part]), out,
            relu_out if relu_out is not None else out, sample_group, c, hw,
            K=len(xs[part]), ACC=first > 0, RELU=relu and last, BLOCK=block)
    return out, relu_out


def backward(d_out: Optional[torch.Tensor], d_relu: Optional[torch.Tensor], out: Optional[torch.Tensor],
             xs: Sequence[torch.Tensor], means: Sequence[torch.Tensor], rstds: Sequence[torch.Tensor],
             groups: Sequence[int]):
    """Gradients (dxs, d_means, d_rstds) from the gradients of out and of relu(out) (either may be
    None; `out` is needed with d_relu). All tensors contiguous."""
    n, c = xs[0].shape[:2]
    hw = xs[0][0, 0].numel()
    k, gcs = len(xs), len(groups) * c
    starts, sizes, _ = group_tables(tuple(groups), xs[0].device)
    block = 512
    split, chunk = _split(groups, c, hw, block)
    part = torch.empty((split, 2 * k * gcs), device=xs[0].device, dtype=torch.float32)
    dxs = [torch.empty_like(x) for x in xs]
    some = d_out if d_out is not None else d_relu  # a valid pointer for the absent gradient
    for first in range(0, k, MAX_INPUTS):
        sel = slice(first, first + MAX_INPUTS)
        _grad_kernel[(gcs, split)](
            some if d_out is None else d_out, some if d_relu is None else d_relu, some if out is None else out,
            *_four(xs[sel]), *_four(dxs[sel]), *_four(means[sel]), *_four(rstds[sel]), part, starts, sizes,
            c, hw, chunk, gcs, k, first, K=len(xs[sel]), HAS_DOUT=d_out is not None, HAS_DRELU=d_relu is not None,
            BLOCK=block)
    stats_grad = sum_rows(part, means[0].dtype).view(2, k, len(groups), c)
    return dxs, list(stats_grad[0].unbind(0)), list(stats_grad[1].unbind(0))
