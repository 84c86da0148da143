"""BN without affine parameters, batch statistics computed per group of samples.

Groups are contiguous ranges of the batch. Statistics are a split reduction: program (g*C + c, s)
sums one chunk of group g's values of channel c into partial[g*C + c, s]; the apply kernels add the
SPLIT partials themselves (a few floats), so each direction is two launches and deterministic.
Sums are taken around a shift (the group's first value of the channel) so that the variance
E[(x-s)^2] - E[x-s]^2 does not cancel catastrophically when the mean is large.
"""
import functools
from typing import Sequence

import torch
import triton
import triton.language as tl


@functools.lru_cache(maxsize=512)
def group_tables(groups: Sequence[int], device: torch.device):
    """(starts, sizes, group of each sample) as int32 tensors on `device`, cached per grouping."""
    sizes = torch.tensor(groups, dtype=torch.int32)
    starts = torch.cumsum(sizes, 0, dtype=torch.int32) - sizes
    sample_group = torch.repeat_interleave(torch.arange(len(groups), dtype=torch.int32), sizes.long())
    return starts.to(device), sizes.to(device), sample_group.to(device)


@triton.jit
def _partial_sums_kernel(a_ptr, b_ptr, part_ptr, shift_ptr, starts_ptr, sizes_ptr, C, HW, CHUNK,
                         SPLIT, STATS: tl.constexpr, BLOCK: tl.constexpr):
    """STATS: sums of (x - shift) and (x - shift)^2 of a = x. Otherwise: sums of a = dy and a * b,
    b = y (the normalised output), for the backward."""
    gc = tl.program_id(0)
    s = tl.program_id(1)
    g = gc // C
    c = gc % C
    start = tl.load(starts_ptr + g)
    total = tl.load(sizes_ptr + g) * HW
    if STATS:
        shift = tl.load(a_ptr + (start * C + c).to(tl.int64) * HW).to(tl.float32)
        if s == 0:
            tl.store(shift_ptr + gc, shift)
    acc_a = tl.zeros([BLOCK], dtype=tl.float32)
    acc_ab = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        e = s * CHUNK + off + tl.arange(0, BLOCK)
        ok = e < total
        addr = ((start + e // HW) * C + c).to(tl.int64) * HW + e % HW
        a = tl.load(a_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        if STATS:
            a = tl.where(ok, a - shift, 0.0)
            b = a
        else:
            b = tl.load(b_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        acc_a += a
        acc_ab += a * b
    tl.store(part_ptr + (gc * SPLIT + s) * 2, tl.sum(acc_a, axis=0))
    tl.store(part_ptr + (gc * SPLIT + s) * 2 + 1, tl.sum(acc_ab, axis=0))


@triton.jit
def _total(part_ptr, gc, SPLIT, SPLIT_P: tl.constexpr):
    i = tl.arange(0, SPLIT_P)
    ok = i < SPLIT
    sa = tl.sum(tl.load(part_ptr + (gc * SPLIT + i) * 2, mask=ok, other=0.0), axis=0)
    sab = tl.sum(tl.load(part_ptr + (gc * SPLIT + i) * 2 + 1, mask=ok, other=0.0), axis=0)
    return sa, sab


@triton.jit
def mean_rstd(part_ptr, shift_ptr, gc, count, eps, SPLIT, SPLIT_P: tl.constexpr):
    s1, s2 = _total(part_ptr, gc, SPLIT, SPLIT_P)
    m = s1 / count
    var = tl.maximum(s2 / count - m * m, 0.0)
    return tl.load(shift_ptr + gc) + m, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _apply_kernel(x_ptr, y_ptr, part_ptr, shift_ptr, sample_group_ptr, sizes_ptr, C, HW, SPLIT, eps,
                  SPLIT_P: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    g = tl.load(sample_group_ptr + plane // C)
    gc = g * C + plane % C
    count = (tl.load(sizes_ptr + g) * HW).to(tl.float32)
    mean, rstd = mean_rstd(part_ptr, shift_ptr, gc, count, eps, SPLIT, SPLIT_P)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HW
    addr = plane.to(tl.int64) * HW + offs
    x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + addr, ((x - mean) * rstd).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_apply_kernel(dy_ptr, y_ptr, dx_ptr, part_ptr, gpart_ptr, shift_ptr, sample_group_ptr, sizes_ptr,
                       C, HW, SPLIT, eps, SPLIT_P: tl.constexpr, BLOCK: tl.constexpr):
    # dx = rstd * (dy - mean(dy) - y * mean(dy * y)), means over the group's values of the channel.
    plane = tl.program_id(0)
    g = tl.load(sample_group_ptr + plane // C)
    gc = g * C + plane % C
    count = (tl.load(sizes_ptr + g) * HW).to(tl.float32)
    _, rstd = mean_rstd(part_ptr, shift_ptr, gc, count, eps, SPLIT, SPLIT_P)
    sdy, sdyy = _total(gpart_ptr, gc, SPLIT, SPLIT_P)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HW
    addr = plane.to(tl.int64) * HW + offs
    dy = tl.load(dy_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    dx = rstd * (dy - sdy / count - y * (sdyy / count))
    tl.store(dx_ptr + addr, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _split(groups: Sequence[int], channels: int, hw: int, block: int, target_programs: int = 1024):
    longest = max(groups) * hw
    split = max(1, min(triton.cdiv(longest, block), triton.cdiv(target_programs, len(groups) * channels)))
    chunk = triton.cdiv(triton.cdiv(longest, split), block) * block
    return triton.cdiv(longest, chunk), chunk


def _apply_block(hw: int) -> int:
    return max(32, min(1024, triton.next_power_of_2(hw)))


def forward(x: torch.Tensor, groups: Sequence[int], eps: float):
    """x (N, C, H, W) contiguous -> (y, saved) where `saved` feeds `backward`."""
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    starts, sizes, sample_group = group_tables(tuple(groups), x.device)
    block = 512
    split, chunk = _split(groups, c, hw, block)
    part = torch.empty((len(groups) * c, split, 2), device=x.device, dtype=torch.float32)
    shift = torch.empty(len(groups) * c, device=x.device, dtype=torch.float32)
    _partial_sums_kernel[(len(groups) * c, split)](x, x, part, shift, starts, sizes, c, hw, chunk, split,
                                                   STATS=True, BLOCK=block)
    y = torch.empty_like(x)
    ablock = _apply_block(hw)
    _apply_kernel[(n * c, triton.cdiv(hw, ablock))](x, y, part, shift, sample_group, sizes, c, hw, split, eps,
                                                    SPLIT_P=triton.next_power_of_2(split), BLOCK=ablock)
    return y, (part, shift, split)


def backward(dy: torch.Tensor, y: torch.Tensor, groups: Sequence[int], eps: float, saved) -> torch.Tensor:
    part, shift, split = saved
    n, c = y.shape[:2]
    hw = y[0, 0].numel()
    starts, sizes, sample_group = group_tables(tuple(groups), y.device)
    block = 512
    _, chunk = _split(groups, c, hw, block)
    gpart = torch.empty_like(part)
    _partial_sums_kernel[(len(groups) * c, split)](dy, y, gpart, shift, starts, sizes, c, hw, chunk, split,
                                                   STATS=False, BLOCK=block)
    dx = torch.empty_like(dy)
    ablock = _apply_block(hw)
    _grad_apply_kernel[(n * c, triton.cdiv(hw, ablock))](dy, y, dx, part, gpart, shift, sample_group, sizes,
                                                         c, hw, split, eps,
                                                         SPLIT_P=triton.next_power_of_2(split), BLOCK=ablock)
    return dx
