"""Routed mixed operation of the parameter-free candidates (semantics: natfast/ops/mixed.py):

    out[n] = w[n,0] * BN(maxpool(x))[n] + w[n,1] * BN(avgpool(x))[n] + w[n,2] * skip[n]

BN statistics per (sample group, candidate) over the samples routed to the candidate (w != 0).
Pool outputs are never stored in the forward: launch 1 pools x and sums the statistics (split
reduction, partials per (group, channel, chunk)); launch 2 pools again (reads served by cache) and
writes only the mixed output, skipping candidates whose weight is zero for the sample.
Backward: launch 1 sums the BN backward terms per routed group; launch 2 turns dy into each pool's
output gradient (and the weight gradient partials); launch 3 gathers them back onto x.
"""
import torch
import triton
import triton.language as tl

from .batchnorm import group_tables
from .pool import out_size, pool_window, window_count
from .reduce import sum_rows

NCAND = 4
STAT = 6  # per (group, channel, chunk): sum and sum of squares of both pools, routed counts


@triton.jit
def _stats(part_ptr, shift_ptr, gc, j, SPLIT, eps, SPLIT_P: tl.constexpr):
    """(mean, rstd, count) of candidate j (0 max, 1 avg) for group-channel gc."""
    i = tl.arange(0, SPLIT_P)
    ok = i < SPLIT
    base = part_ptr + (gc * SPLIT + i) * 6
    s1 = tl.sum(tl.load(base + 2 * j, mask=ok, other=0.0), axis=0)
    s2 = tl.sum(tl.load(base + 2 * j + 1, mask=ok, other=0.0), axis=0)
    count = tl.maximum(tl.sum(tl.load(base + 4 + j, mask=ok, other=0.0), axis=0), 1.0)
    m = s1 / count
    var = tl.maximum(s2 / count - m * m, 0.0)
    return tl.load(shift_ptr + gc) + m, 1.0 / tl.sqrt(var + eps), count


@triton.jit
def _lanes(gc, s, C, HO, WO, CHUNK, off, starts_ptr, sizes_ptr, BLOCK: tl.constexpr):
    """Sample, channel plane and output pixel of each lane of a chunk of group-channel gc."""
    g = gc // C
    start = tl.load(starts_ptr + g)
    total = tl.load(sizes_ptr + g) * HO * WO
    e = s * CHUNK + off + tl.arange(0, BLOCK)
    ok = e < total
    n = start + e // (HO * WO)
    pix = e % (HO * WO)
    plane = (n * C + gc % C).to(tl.int64)
    return ok, n, plane, pix


@triton.jit
def _stats_kernel(x_ptr, w_ptr, part_ptr, shift_ptr, starts_ptr, sizes_ptr, C, H, W, HO, WO, CHUNK, SPLIT,
                  K: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    gc = tl.program_id(0)
    s = tl.program_id(1)
    start = tl.load(starts_ptr + gc // C)
    shift = tl.load(x_ptr + (start * C + gc % C).to(tl.int64) * H * W).to(tl.float32)
    if s == 0:
        tl.store(shift_ptr + gc, shift)
    s_max = tl.zeros([BLOCK], dtype=tl.float32)
    q_max = tl.zeros([BLOCK], dtype=tl.float32)
    c_max = tl.zeros([BLOCK], dtype=tl.float32)
    s_avg = tl.zeros([BLOCK], dtype=tl.float32)
    q_avg = tl.zeros([BLOCK], dtype=tl.float32)
    c_avg = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        ok, n, plane, pix = _lanes(gc, s, C, HO, WO, CHUNK, off, starts_ptr, sizes_ptr, BLOCK)
        oh = pix // WO
        ow = pix % WO
        r_max = ok & (tl.load(w_ptr + n * 4, mask=ok, other=0.0) != 0)
        r_avg = ok & (tl.load(w_ptr + n * 4 + 1, mask=ok, other=0.0) != 0)
        y, _ = pool_window(x_ptr + plane * H * W, oh, ow, r_max, H, W, True, K, STRIDE, BLOCK)
        d = tl.where(r_max, y - shift, 0.0)
        s_max += d
        q_max += d * d
        c_max += r_max.to(tl.float32)
        y, _ = pool_window(x_ptr + plane * H * W, oh, ow, r_avg, H, W, False, K, STRIDE, BLOCK)
        d = tl.where(r_avg, y - shift, 0.0)
        s_avg += d
        q_avg += d * d
        c_avg += r_avg.to(tl.float32)
    base = part_ptr + (gc * SPLIT + s) * 6
    tl.store(base, tl.sum(s_max, axis=0))
    tl.store(base + 1, tl.sum(q_max, axis=0))
    tl.store(base + 2, tl.sum(s_avg, axis=0))
    tl.store(base + 3, tl.sum(q_avg, axis=0))
    tl.store(base + 4, tl.sum(c_max, axis=0))
    tl.store(base + 5, tl.sum(c_avg, axis=0))


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, skip_ptr, y_ptr, part_ptr, shift_ptr, sample_group_ptr, C, H, W, HO, WO, SPLIT, eps,
                HAS_SKIP: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, SPLIT_P: tl.constexpr,
                BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    n = plane // C
    gc = tl.load(sample_group_ptr + n) * C + plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < HO * WO
    oh = offs // WO
    ow = offs % WO
    x_base = x_ptr + plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    w_max = tl.load(w_ptr + n * 4).to(tl.float32)
    if w_max != 0:
        mean, rstd, count = _stats(part_ptr, shift_ptr, gc, 0, SPLIT, eps, SPLIT_P)
        y, argmax = pool_window(x_base, oh, ow, valid, H, W, True, K, STRIDE, BLOCK)
        acc += w_max * (y - mean) * rstd
    w_avg = tl.load(w_ptr + n * 4 + 1).to(tl.float32)
    if w_avg != 0:
        mean, rstd, count = _stats(part_ptr, shift_ptr, gc, 1, SPLIT, eps, SPLIT_P)
        y, argmax = pool_window(x_base, oh, ow, valid, H, W, False, K, STRIDE, BLOCK)
        acc += w_avg * (y - mean) * rstd
    if HAS_SKIP:
        w_skip = tl.load(w_ptr + n * 4 + 2).to(tl.float32)
        if w_skip != 0:
            v = tl.load(skip_ptr + plane.to(tl.int64) * HO * WO + offs, mask=valid, other=0.0)
            acc += w_skip * v.to(tl.float32)
    tl.store(y_ptr + plane.to(tl.int64) * HO * WO + offs, acc.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_stats_kernel(x_ptr, w_ptr, dy_ptr, part_ptr, shift_ptr, gpart_ptr, starts_ptr, sizes_ptr,
                       C, H, W, HO, WO, CHUNK, SPLIT, eps, K: tl.constexpr, STRIDE: tl.constexpr,
                       SPLIT_P: tl.constexpr, BLOCK: tl.constexpr):
    # Per routed group and candidate: sums of g = w * dy and of g * yhat (yhat the BN output).
    gc = tl.program_id(0)
    s = tl.program_id(1)
    # (Triton's compiler wants each name's type fixed across the loop below: no `_` reused.)
    mean_max, rstd_max, count_max = _stats(part_ptr, shift_ptr, gc, 0, SPLIT, eps, SPLIT_P)
    mean_avg, rstd_avg, count_avg = _stats(part_ptr, shift_ptr, gc, 1, SPLIT, eps, SPLIT_P)
    a_max = tl.zeros([BLOCK], dtype=tl.float32)
    b_max = tl.zeros([BLOCK], dtype=tl.float32)
    a_avg = tl.zeros([BLOCK], dtype=tl.float32)
    b_avg = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        ok, n, plane, pix = _lanes(gc, s, C, HO, WO, CHUNK, off, starts_ptr, sizes_ptr, BLOCK)
        oh = pix // WO
        ow = pix % WO
        dy = tl.load(dy_ptr + plane * HO * WO + pix, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + n * 4, mask=ok, other=0.0).to(tl.float32)
        y, argmax = pool_window(x_ptr + plane * H * W, oh, ow, ok & (w != 0), H, W, True, K, STRIDE, BLOCK)
        g = tl.where(w != 0, w * dy, 0.0)
        a_max += g
        b_max += g * tl.where(w != 0, (y - mean_max) * rstd_max, 0.0)
        w = tl.load(w_ptr + n * 4 + 1, mask=ok, other=0.0).to(tl.float32)
        y, argmax = pool_window(x_ptr + plane * H * W, oh, ow, ok & (w != 0), H, W, False, K, STRIDE, BLOCK)
        g = tl.where(w != 0, w * dy, 0.0)
        a_avg += g
        b_avg += g * tl.where(w != 0, (y - mean_avg) * rstd_avg, 0.0)
    base = gpart_ptr + (gc * SPLIT + s) * 4
    tl.store(base, tl.sum(a_max, axis=0))
    tl.store(base + 1, tl.sum(b_max, axis=0))
    tl.store(base + 2, tl.sum(a_avg, axis=0))
    tl.store(base + 3, tl.sum(b_avg, axis=0))


@triton.jit
def _pool_grad(x_base, dy, w, oh, ow, valid, gpart_ptr, part_ptr, shift_ptr, gc, j, H, W, SPLIT, eps,
               IS_MAX: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, SPLIT_P: tl.constexpr,
               BLOCK: tl.constexpr):
    """(gradient of the pool output, argmax, dy . yhat over the block) of candidate j."""
    mean, rstd, count = _stats(part_ptr, shift_ptr, gc, j, SPLIT, eps, SPLIT_P)
    i = tl.arange(0, SPLIT_P)
    base = gpart_ptr + (gc * SPLIT + i) * 4 + 2 * j
    sum_g = tl.sum(tl.load(base, mask=i < SPLIT, other=0.0), axis=0)
    sum_gy = tl.sum(tl.load(base + 1, mask=i < SPLIT, other=0.0), axis=0)
    y, where = pool_window(x_base, oh, ow, valid, H, W, IS_MAX, K, STRIDE, BLOCK)
    yhat = tl.where(valid, (y - mean) * rstd, 0.0)
    d_pool = rstd * (w * dy - sum_g / count - yhat * (sum_gy / count))
    return d_pool, where, tl.sum(dy * yhat, axis=0)


@triton.jit
def _out_grad_kernel(x_ptr, w_ptr, dy_ptr, skip_ptr, part_ptr, shift_ptr, gpart_ptr, sample_group_ptr,
                     dmax_ptr, idx_ptr, davg_ptr, dw_part_ptr, N, C, H, W, HO, WO, SPLIT, eps,
                     HAS_SKIP: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, SPLIT_P: tl.constexpr,
                     BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    blk = tl.program_id(1)
    n = plane // C
    gc = tl.load(sample_group_ptr + n) * C + plane % C
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    valid = offs < HO * WO
    oh = offs // WO
    ow = offs % WO
    out_addr = plane.to(tl.int64) * HO * WO + offs
    x_base = x_ptr + plane.to(tl.int64) * H * W
    dy = tl.load(dy_ptr + out_addr, mask=valid, other=0.0).to(tl.float32)
    # Weight-gradient partials: row (channel, block), column (sample, candidate).
    dw_row = dw_part_ptr + ((plane % C) * tl.num_programs(1) + blk).to(tl.int64) * N * 4 + n * 4
    zero = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    dw_max = zero
    dw_avg = zero
    dw_skip = zero
    w = tl.load(w_ptr + n * 4).to(tl.float32)
    if w != 0:
        d_pool, where, dw_max = _pool_grad(x_base, dy, w, oh, ow, valid, gpart_ptr, part_ptr, shift_ptr, gc, 0,
                                           H, W, SPLIT, eps, True, K, STRIDE, SPLIT_P, BLOCK)
        tl.store(dmax_ptr + out_addr, d_pool, mask=valid)
        tl.store(idx_ptr + out_addr, where, mask=valid)
    w = tl.load(w_ptr + n * 4 + 1).to(tl.float32)
    if w != 0:
        d_pool, _, dw_avg = _pool_grad(x_base, dy, w, oh, ow, valid, gpart_ptr, part_ptr, shift_ptr, gc, 1,
                                       H, W, SPLIT, eps, False, K, STRIDE, SPLIT_P, BLOCK)
        tl.store(davg_ptr + out_addr, d_pool, mask=valid)
    if HAS_SKIP:
        v = tl.load(skip_ptr + out_addr, mask=valid, other=0.0).to(tl.float32)
        dw_skip = tl.sum(dy * v, axis=0)
    tl.store(dw_row, dw_max)
    tl.store(dw_row + 1, dw_avg)
    tl.store(dw_row + 2, dw_skip)
    tl.store(dw_row + 3, 0.0)


@triton.jit
def _input_grad_kernel(w_ptr, dy_ptr, dmax_ptr, idx_ptr, davg_ptr, dx_ptr, C, H, W, HO, WO,
                       SKIP_IS_X: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    PAD: tl.constexpr = K // 2
    plane = tl.program_id(0)
    n = plane // C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    ih = offs // W
    iw = offs % W
    # Per-sample routing, broadcast to the block (the interpreter cannot AND a scalar with a block).
    no_lanes = tl.zeros([BLOCK], dtype=tl.int32)
    use_max = (no_lanes + (tl.load(w_ptr + n * 4) != 0).to(tl.int32)) != 0
    use_avg = (no_lanes + (tl.load(w_ptr + n * 4 + 1) != 0).to(tl.int32)) != 0
    out_base = plane.to(tl.int64) * HO * WO
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(K):
        th = ih + PAD - kh
        oh = th // STRIDE
        row_ok = valid & (th >= 0) & (th % STRIDE == 0) & (oh < HO)
        for kw in tl.static_range(K):
            tw = iw + PAD - kw
            ow = tw // STRIDE
            m = row_ok & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
            addr = out_base + oh * WO + ow
            mm = m & use_max
            src = tl.load(idx_ptr + addr, mask=mm, other=-1)
            acc += tl.where(src == offs, tl.load(dmax_ptr + addr, mask=mm, other=0.0), 0.0)
            ma = m & use_avg
            acc += tl.load(davg_ptr + addr, mask=ma, other=0.0) / window_count(oh, ow, H, W, K, STRIDE)
    if SKIP_IS_X:
        w_skip = tl.load(w_ptr + n * 4 + 2).to(tl.float32)
        acc += w_skip * tl.load(dy_ptr + plane.to(tl.int64) * H * W + offs, mask=valid, other=0.0).to(tl.float32)
    tl.store(dx_ptr + plane.to(tl.int64) * H * W + offs, acc.to(dx_ptr.dtype.element_ty), mask=valid)


def _block(pixels: int) -> int:
    return max(32, min(512, triton.next_power_of_2(pixels)))


def _split(groups, channels: int, pixels: int, block: int, target_programs: int = 1024):
    longest = max(groups) * pixels
    split = max(1, min(triton.cdiv(longest, block), triton.cdiv(target_programs, len(groups) * channels)))
    chunk = triton.cdiv(triton.cdiv(longest, split), block) * block
    return triton.cdiv(longest, chunk), chunk


def forward(x, weights, kernel, stride, groups, skip, eps):
    """x (N, C, H, W), weights (N, 4) float32, skip (N, C, HO, WO) or None; all contiguous.
    Returns (out, saved for `backward`)."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, kernel, stride), out_size(w, kernel, stride)
    starts, sizes, sample_group = group_tables(tuple(groups), x.device)
    block = 256
    split, chunk = _split(groups, c, ho * wo, block)
    part = torch.empty((len(groups) * c, split, STAT), device=x.device, dtype=torch.float32)
    shift = torch.empty(len(groups) * c, device=x.device, dtype=torch.float32)
    _stats_kernel[(len(groups) * c, split)](x, weights, part, shift, starts, sizes, c, h, w, ho, wo, chunk, split,
                                            K=kernel, STRIDE=stride, BLOCK=block)
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    oblock = _block(ho * wo)
    _fwd_kernel[(n * c, triton.cdiv(ho * wo, oblock))](
        x, weights, skip if skip is not None else x, y, part, shift, sample_group, c, h, w, ho, wo, split, eps,
        HAS_SKIP=skip is not None, K=kernel, STRIDE=stride, SPLIT_P=triton.next_power_of_2(split), BLOCK=oblock)
    return y, (part, shift, split, chunk)


def backward(dy, x, weights, kernel, stride, groups, skip, skip_is_x, eps, saved):
    """(dx, d_weights float32 (N, 4)); the caller adds skip's gradient w[:, 2] * dy when skip is not x."""
    part, shift, split, chunk = saved
    n, c, h, w = x.shape
    ho, wo = dy.shape[2:]
    starts, sizes, sample_group = group_tables(tuple(groups), x.device)
    split_p = triton.next_power_of_2(split)
    gpart = torch.empty((len(groups) * c, split, 4), device=x.device, dtype=torch.float32)
    _grad_stats_kernel[(len(groups) * c, split)](x, weights, dy, part, shift, gpart, starts, sizes, c, h, w, ho, wo,
                                                 chunk, split, eps, K=kernel, STRIDE=stride, SPLIT_P=split_p,
                                                 BLOCK=256)
    oblock = _block(ho * wo)
    blocks = triton.cdiv(ho * wo, oblock)
    d_max = torch.empty((n, c, ho, wo), device=x.device, dtype=torch.float32)
    d_avg = torch.empty_like(d_max)
    index = torch.empty((n, c, ho, wo), device=x.device, dtype=torch.int32)
    dw_part = torch.empty((c * blocks, n * 4), device=x.device, dtype=torch.float32)
    _out_grad_kernel[(n * c, blocks)](x, weights, dy, skip if skip is not None else dy, part, shift, gpart,
                                      sample_group, d_max, index, d_avg, dw_part, n, c, h, w, ho, wo, split, eps,
                                      HAS_SKIP=skip is not None, K=kernel, STRIDE=stride, SPLIT_P=split_p,
                                      BLOCK=oblock)
    dx = torch.empty_like(x)
    iblock = _block(h * w)
    _input_grad_kernel[(n * c, triton.cdiv(h * w, iblock))](weights, dy, d_max, index, d_avg, dx, c, h, w, ho, wo,
                                                           SKIP_IS_X=skip_is_x, K=kernel, STRIDE=stride,
                                                           BLOCK=iblock)
    return dx, sum_rows(dw_part).view(n, 4)
