"""Backward of one graph-engine cell (natfast/graph/): launches that read the architecture from the
device slot table (natfast/graph/table.py), so the launch sequence is the same for every genotype
and one CUDA graph replays them all. Launcher: natfast/graph/triton_backward.py.

Per node t, in reverse order, grid (G, 2): program (g, i) serves slot s = 2(t-2) + i and pixel
tiles g, g + G, ... . A program whose slot the stage does not concern returns at once.

  _head_kernel    node gradient dy = d_out block + dsrc of the later slots reading node t (slot
                  order) -> dnode; skip at stride 1 passes dy to its source; partials of the last
                  BN's backward means (sep: BN2 over b2, other kinds: BN1 over b1)
  _bn_pw_kernel   PHASE 0: backward of the last BN, then for sep/dil of the pointwise (w3 / w1)
                  -> g1, and the pointwise weight partials
                  PHASE 1 (sep): backward of BN1 (from g2), of the pointwise w1 -> g1, partials
  _dw_mid_kernel  sep: backward of the depthwise w2 masked by relu(BN1) -> g2, partials of BN1's
                  backward means and of w2; max_pool: each output's argmax tap -> g2
  _to_src_kernel  backward of the op's first stage into dsrc[s] at the source's size: depthwise
                  w0 (sep/dil), k x k conv (conv), pooling, FactorizedReduce; weight partials.
                  Extra programs G + r (grid (G + KMAX^2 CS, 2)) sum a conv's weight gradient
                  per tap, in CS partial rows
Per cell:
  _input_grad_kernel    dx[j] = sum of dsrc over the slots reading input node j, in slot order
  _weight_reduce_kernel flat_grad[offset + e] += the sum of the slot's weight partial rows

A program holds all (padded) channels of BLOCK pixels, so pointwise and conv stages are one
`tl.dot` per tap. Reductions are deterministic without float atomics: each program writes one
partial row per sum (BN means: bpart (NS, G, 2, CP); weights: wpart (NS, G, WROW), weight j of a
slot at column WOFF_j; a conv's weight: conv (NS, CS, CONVROW)) and consumers add the rows in order.

Indices are int64: besides never overflowing, Triton's interpreter (the CPU tests) checks every
int32 add and multiply for overflow, which makes int32 index arithmetic several times slower there.
For the same reason the tap loops inline their address arithmetic rather than call helpers.
"""
import triton
import triton.language as tl

# natfast.cell_plan.KINDS
NULL = tl.constexpr(0)
SKIP = tl.constexpr(1)
MAX_POOL = tl.constexpr(2)
SEP = tl.constexpr(4)
DIL = tl.constexpr(5)
CONV = tl.constexpr(6)
FIELDS = tl.constexpr(9)  # natfast.graph.table.SLOT_FIELDS


@triton.jit
def _field(row, f: tl.constexpr):
    return tl.cast(tl.load(row + f), tl.int64)


@triton.jit
def _pixels(tile, HS, WS, npix, BLOCK: tl.constexpr):
    """The tile's pixels over (N, HS, WS): validity, sample, row, column ([BLOCK] each)."""
    p = tl.cast(tile, tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return p < npix, p // (HS * WS), (p // WS) % HS, p % WS


@triton.jit
def _source(x_ptr, out_ptr, src, N, B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr,
            WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Base, sample stride and size of node `src`: x[src] (HIN x WIN) or out's block src - 2."""
    is_x = src < 2
    # Clamped so that the unselected address stays inside its buffer's range of values.
    base = tl.where(is_x, x_ptr + tl.minimum(tl.maximum(src, 0), 1) * N * (C * HIN * WIN),
                    out_ptr + tl.maximum(src - 2, 0) * (C * H * W))
    sample = tl.where(is_x, C * HIN * WIN, B * C * H * W)
    return base, tl.cast(sample, tl.int64), tl.cast(tl.where(is_x, HIN, H), tl.int64), \
        tl.cast(tl.where(is_x, WIN, W), tl.int64)


@triton.jit
def _matrix(ptr, rows_from, rows_to, row_stride, col_stride, C: tl.constexpr, CP: tl.constexpr):
    """[CP, CP]: entry (r, i) = ptr[(r - rows_from) * row_stride + i * col_stride] for rows in
    [rows_from, rows_to) and columns i < C, zero elsewhere."""
    r = tl.arange(0, CP).to(tl.int64)
    i = tl.arange(0, CP).to(tl.int64)
    ok = ((r >= rows_from) & (r < rows_to))[:, None] & (i < C)[None, :]
    return tl.load(ptr + (r - rows_from)[:, None] * row_stride + (i * col_stride)[None, :], mask=ok, other=0.0)


@triton.jit
def _store_matrix(ptr, value, rows_from, rows_to, row_stride, col_stride, C: tl.constexpr, CP: tl.constexpr):
    r = tl.arange(0, CP).to(tl.int64)
    i = tl.arange(0, CP).to(tl.int64)
    ok = ((r >= rows_from) & (r < rows_to))[:, None] & (i < C)[None, :]
    tl.store(ptr + (r - rows_from)[:, None] * row_stride + (i * col_stride)[None, :], value, mask=ok)


@triton.jit
def _store_taps(ptr, acc, k, c, cm, KKP: tl.constexpr):
    """acc [KKP, CP] (tap, channel) as a depthwise weight gradient (C, k, k) at ptr."""
    tap = tl.arange(0, KKP).to(tl.int64)
    tl.store(ptr + c[None, :] * (k * k) + tap[:, None], acc, mask=(tap < k * k)[:, None] & cm[None, :])


@triton.jit
def _stats(stats_ptr, j, s, c, cm, NS: tl.constexpr, C: tl.constexpr):
    at = stats_ptr + (j * NS + s) * 2 * C + c
    return tl.load(at, mask=cm, other=0.0), tl.load(at + C, mask=cm, other=0.0)


@triton.jit
def _bn_means(bpart_ptr, s, count, G: tl.constexpr, CP: tl.constexpr):
    """mean(dy) and mean(dy * xhat) per channel from slot s's G partial rows, in order."""
    c = tl.arange(0, CP)
    m0 = tl.zeros([CP], dtype=tl.float32)
    m1 = tl.zeros([CP], dtype=tl.float32)
    for g in range(G):
        at = bpart_ptr + (s * G + g) * 2 * CP + c
        m0 += tl.load(at)
        m1 += tl.load(at + CP)
    return m0 / count, m1 / count


@triton.jit
def _head_kernel(slots_ptr, dout_ptr, dsrc_ptr, dnode_ptr, b1_ptr, b2_ptr, stats_ptr, bpart_ptr, t, N,
                 B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr,
                 W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    i = tl.program_id(1)
    s = tl.cast(2 * (t - 2) + i, tl.int64)
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    stride = tl.load(row + 4)
    if (i == 1) & (kind == NULL):  # slot 0's programs write dnode whatever the kinds
        return
    identity = (kind == SKIP) & (stride == 1)
    has_bn = (kind >= MAX_POOL) | ((kind == SKIP) & (stride == 2))
    second = kind == SEP  # sep's last BN is its second (b2, stats[1])
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    mean, rstd = _stats(stats_ptr, second.to(tl.int64), s, c, cm & has_bn, 2 * B, C)
    plane = tl.cast(N, tl.int64) * (C * H * W)
    plane_in = tl.cast(N, tl.int64) * (C * HIN * WIN)
    dcol = (tl.cast(t - 2, tl.int64) * C + c) * (H * W)  # d_out's channels of node t
    acc0 = tl.zeros([CP], dtype=tl.float32)
    acc1 = tl.zeros([CP], dtype=tl.float32)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        m = valid[:, None] & cm[None, :]
        at = (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :]
        dy = tl.load(dout_ptr + (n * (B * C * H * W) + oh * W + ow)[:, None] + dcol[None, :], mask=m, other=0.0)
        for s2 in range(2 * (t - 1), 2 * B):  # what the later slots reading node t sent, in order
            reads = tl.load(slots_ptr + s2 * FIELDS + 3) == t
            dy += tl.load(dsrc_ptr + tl.cast(s2, tl.int64) * plane_in + at, mask=m & reads, other=0.0)
        tl.store(dnode_ptr + tl.cast(t - 2, tl.int64) * plane + at, dy, mask=m & (i == 0))
        tl.store(dsrc_ptr + s * plane_in + at, dy, mask=m & identity)
        b = tl.load(b1_ptr + s * plane + at, mask=m & has_bn & (kind != SEP), other=0.0) \
            + tl.load(b2_ptr + s * plane + at, mask=m & second, other=0.0)
        acc0 += tl.sum(dy, 0)
        acc1 += tl.sum(dy * ((b - mean[None, :]) * rstd[None, :]), 0)
    at = bpart_ptr + (s * G + g) * 2 * CP + c
    tl.store(at, acc0, mask=has_bn)
    tl.store(at + CP, acc1, mask=has_bn)


@triton.jit
def _bn_pw_kernel(slots_ptr, gin_ptr, g1_ptr, b1_ptr, b2_ptr, a1_ptr, a2_ptr, stats_ptr, bpart_ptr, flat_ptr,
                  wpart_ptr, t, N, PHASE: tl.constexpr, B: tl.constexpr, C: tl.constexpr, H: tl.constexpr,
                  W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, WROW: tl.constexpr,
                  WOFF1: tl.constexpr, WOFF3: tl.constexpr, BLOCK: tl.constexpr):
    """gin: PHASE 0 dnode (node t's gradient), PHASE 1 g2 (sep's gradient of BN1's output)."""
    g = tl.program_id(0)
    s = tl.cast(2 * (t - 2) + tl.program_id(1), tl.int64)
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    stride = tl.load(row + 4)
    plane = tl.cast(N, tl.int64) * (C * H * W)
    second = (kind == SEP) & (PHASE == 0)  # sep's second BN (b2, w3 on a2), else the first (b1, w1 on a1)
    if PHASE == 0:
        skip = (kind == NULL) | ((kind == SKIP) & (stride == 1))
        gin_at = gin_ptr + tl.cast(t - 2, tl.int64) * plane
    else:
        skip = kind != SEP
        gin_at = gin_ptr + s * plane
    if skip:
        return
    pw = (kind == SEP) | (kind == DIL)
    w = tl.maximum(tl.cast(tl.load(row + tl.where(second, 8, 6)), tl.int64), 0)
    a_ptr = tl.where(second, a2_ptr, a1_ptr)
    b_ptr = tl.where(second, b2_ptr, b1_ptr)
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    mean, rstd = _stats(stats_ptr, second.to(tl.int64), s, c, cm, 2 * B, C)
    m0, m1 = _bn_means(bpart_ptr, s, N * H * W * 1.0, G, CP)
    wt = _matrix(flat_ptr + w, 0, tl.where(pw, C, 0), C, 1, C, CP)  # (co, ci)
    dw = tl.zeros([CP, CP], dtype=tl.float32)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        m = valid[:, None] & cm[None, :]
        at = (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :]
        dy = tl.load(gin_at + at, mask=m, other=0.0)
        xhat = (tl.load(b_ptr + s * plane + at, mask=m, other=0.0) - mean[None, :]) * rstd[None, :]
        gb = tl.where(m, rstd[None, :] * (dy - m0[None, :] - xhat * m1[None, :]), 0.0)
        a = tl.load(a_ptr + s * plane + at, mask=m & pw, other=0.0)
        dw += tl.dot(tl.trans(gb), a, input_precision="ieee")
        tl.store(g1_ptr + s * plane + at, tl.where(pw, tl.dot(gb, wt, input_precision="ieee"), gb), mask=m)
    woff = tl.where(second, WOFF3, WOFF1)
    _store_matrix(wpart_ptr + (s * G + g) * WROW + woff, dw, 0, tl.where(pw, C, 0), C, 1, C, CP)


@triton.jit
def _sep_mid(row, s, g, g1_ptr, g2_ptr, b1_ptr, stats_ptr, flat_ptr, bpart_ptr, wpart_ptr, N, B: tl.constexpr,
             C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr,
             WROW: tl.constexpr, WOFF2: tl.constexpr, KKP: tl.constexpr, BLOCK: tl.constexpr):
    k = _field(row, 1)
    w2 = _field(row, 7)
    pad = k // 2
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    mean, rstd = _stats(stats_ptr, 0, s, c, cm, 2 * B, C)
    plane = tl.cast(N, tl.int64) * (C * H * W)
    gslot = g1_ptr + s * plane
    bslot = b1_ptr + s * plane
    taps = tl.arange(0, KKP)
    acc0 = tl.zeros([CP], dtype=tl.float32)
    acc1 = tl.zeros([CP], dtype=tl.float32)
    dw = tl.zeros([KKP, CP], dtype=tl.float32)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        m = valid[:, None] & cm[None, :]
        at = (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :]
        dy = tl.load(gslot + at, mask=m, other=0.0)
        gz = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for kh in range(k):
            ih = oh + (pad - kh)  # the outputs whose window holds this pixel at tap (kh, kw) ...
            jh = oh + (kh - pad)  # ... and the input this output reads at that tap
            rows_ok = valid & (ih >= 0) & (ih < H)
            jrows_ok = valid & (jh >= 0) & (jh < H)
            for kw in range(k):
                iw = ow + (pad - kw)
                jw = ow + (kw - pad)
                ok = rows_ok & (iw >= 0) & (iw < W)
                v = tl.load(gslot + (n * (C * H * W) + ih * W + iw)[:, None] + (c * (H * W))[None, :],
                            mask=ok[:, None] & cm[None, :], other=0.0)
                gz += v * tl.load(flat_ptr + w2 + c * (k * k) + (kh * k + kw), mask=cm, other=0.0)[None, :]
                ok = jrows_ok & (jw >= 0) & (jw < W)
                z = tl.load(bslot + (n * (C * H * W) + jh * W + jw)[:, None] + (c * (H * W))[None, :],
                            mask=ok[:, None] & cm[None, :], other=0.0)
                # relu(BN1) is zero-padded: the padding comes after the BN
                z = tl.where(ok[:, None], tl.maximum((z - mean[None, :]) * rstd[None, :], 0.0), 0.0)
                dw += tl.where(taps[:, None] == kh * k + kw, tl.sum(dy * z, 0)[None, :], 0.0)
        z = (tl.load(bslot + at, mask=m, other=0.0) - mean[None, :]) * rstd[None, :]
        gz = tl.where(m & (z > 0), gz, 0.0)
        tl.store(g2_ptr + s * plane + at, gz, mask=m)
        acc0 += tl.sum(gz, 0)
        acc1 += tl.sum(gz * z, 0)  # no affine: BN1's output is its xhat
    at = bpart_ptr + (s * G + g) * 2 * CP + c
    tl.store(at, acc0)
    tl.store(at + CP, acc1)
    _store_taps(wpart_ptr + (s * G + g) * WROW + WOFF2, dw, k, c, cm, KKP)


@triton.jit
def _argmax(row, s, g, x_ptr, out_ptr, g2_ptr, N, B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr,
            WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr,
            BLOCK: tl.constexpr):
    """Each output's window tap holding the maximum, the first in row-major order on ties (what
    PyTorch's max_pool2d records), as a float."""
    k = _field(row, 1)
    stride = _field(row, 4)
    base, sample, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
    pad = k // 2
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    plane = tl.cast(N, tl.int64) * (C * H * W)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        best = tl.full([BLOCK, CP], float("-inf"), dtype=tl.float32)
        arg = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for kh in range(k):
            ih = oh * stride + (kh - pad)
            rows_ok = valid & (ih >= 0) & (ih < hs)
            for kw in range(k):
                iw = ow * stride + (kw - pad)
                ok = rows_ok & (iw >= 0) & (iw < ws)
                v = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :],
                            mask=ok[:, None] & cm[None, :], other=float("-inf"))
                better = v > best
                best = tl.where(better, v, best)
                arg = tl.where(better, (kh * k + kw) * 1.0, arg)
        tl.store(g2_ptr + s * plane + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :], arg,
                 mask=valid[:, None] & cm[None, :])


@triton.jit
def _dw_mid_kernel(slots_ptr, g1_ptr, g2_ptr, b1_ptr, stats_ptr, x_ptr, out_ptr, flat_ptr, bpart_ptr, wpart_ptr,
                   t, N, B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr,
                   W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, WROW: tl.constexpr,
                   WOFF2: tl.constexpr, KKP: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    s = tl.cast(2 * (t - 2) + tl.program_id(1), tl.int64)
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    if (kind != SEP) & (kind != MAX_POOL):
        return
    if kind == SEP:
        _sep_mid(row, s, g, g1_ptr, g2_ptr, b1_ptr, stats_ptr, flat_ptr, bpart_ptr, wpart_ptr, N, B, C, H, W, CP,
                 G, WROW, WOFF2, KKP, BLOCK)
    else:
        _argmax(row, s, g, x_ptr, out_ptr, g2_ptr, N, B, C, HIN, WIN, H, W, CP, G, BLOCK)


@triton.jit
def _dw_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, wpart_ptr, N, B: tl.constexpr,
               C: tl.constexpr, HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
               CP: tl.constexpr, G: tl.constexpr, WROW: tl.constexpr, KKP: tl.constexpr, BLOCK: tl.constexpr):
    """Depthwise w0 (k, stride, dilation) of relu(source): the input gradient gathered per source
    pixel from the outputs whose window holds it, masked by source > 0; weight partials."""
    k = _field(row, 1)
    dil = _field(row, 2)
    stride = _field(row, 4)
    w0 = _field(row, 5)
    base, sample, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
    pad = dil * (k // 2)
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    plane = tl.cast(N, tl.int64) * (C * H * W)
    gslot = g1_ptr + s * plane
    npix = tl.cast(N, tl.int64) * hs * ws
    for src_tile in range(g, tl.cdiv(npix, BLOCK), G):  # int64: a name apart from the int32 `tile`
        valid, n, ih, iw = _pixels(src_tile, hs, ws, npix, BLOCK)
        acc = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for kh in range(k):
            th = ih + (pad - kh * dil)
            oh = th // stride
            rows_ok = valid & (th >= 0) & (th % stride == 0) & (oh < H)
            for kw in range(k):
                tw = iw + (pad - kw * dil)
                ow = tw // stride
                ok = rows_ok & (tw >= 0) & (tw % stride == 0) & (ow < W)
                v = tl.load(gslot + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :],
                            mask=ok[:, None] & cm[None, :], other=0.0)
                acc += v * tl.load(flat_ptr + w0 + c * (k * k) + (kh * k + kw), mask=cm, other=0.0)[None, :]
        m = valid[:, None] & cm[None, :]
        at = (n * (C * hs * ws) + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :]
        x = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :], mask=m, other=0.0)
        tl.store(dsrc_ptr + s * tl.cast(N, tl.int64) * (C * HIN * WIN) + at, tl.where(x > 0, acc, 0.0), mask=m)
    taps = tl.arange(0, KKP)
    dw = tl.zeros([KKP, CP], dtype=tl.float32)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        dy = tl.load(gslot + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :],
                     mask=valid[:, None] & cm[None, :], other=0.0)
        for kh in range(k):
            ih = oh * stride + (kh * dil - pad)
            rows_ok = valid & (ih >= 0) & (ih < hs)
            for kw in range(k):
                iw = ow * stride + (kw * dil - pad)
                ok = rows_ok & (iw >= 0) & (iw < ws)
                x = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :],
                            mask=ok[:, None] & cm[None, :], other=0.0)
                dw += tl.where(taps[:, None] == kh * k + kw, tl.sum(dy * tl.maximum(x, 0.0), 0)[None, :], 0.0)
    _store_taps(wpart_ptr + (s * G + g) * WROW, dw, k, c, cm, KKP)


@triton.jit
def _conv_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, N, B: tl.constexpr, C: tl.constexpr,
                 HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr,
                 G: tl.constexpr, BLOCK: tl.constexpr):
    """Input gradient of the k x k conv w0 (C, C, k, k) of relu(source): per tap, one dot with the
    tap's (co, ci) matrix."""
    k = _field(row, 1)
    stride = _field(row, 4)
    w0 = _field(row, 5)
    base, sample, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
    pad = k // 2
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    gslot = g1_ptr + s * tl.cast(N, tl.int64) * (C * H * W)
    wat = c[:, None] * (C * k * k) + c[None, :] * (k * k)  # a tap's (co, ci) in the weight, less the tap
    wok = cm[:, None] & cm[None, :]
    npix = tl.cast(N, tl.int64) * hs * ws
    for tile in range(g, tl.cdiv(npix, BLOCK), G):
        valid, n, ih, iw = _pixels(tile, hs, ws, npix, BLOCK)
        acc = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for kh in range(k):
            th = ih + (pad - kh)
            oh = th // stride
            rows_ok = valid & (th >= 0) & (th % stride == 0) & (oh < H)
            for kw in range(k):
                tw = iw + (pad - kw)
                ow = tw // stride
                ok = rows_ok & (tw >= 0) & (tw % stride == 0) & (ow < W)
                v = tl.load(gslot + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :],
                            mask=ok[:, None] & cm[None, :], other=0.0)
                wt = tl.load(flat_ptr + w0 + (kh * k + kw) + wat, mask=wok, other=0.0)
                acc += tl.dot(v, wt, input_precision="ieee")
        m = valid[:, None] & cm[None, :]
        at = (n * (C * hs * ws) + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :]
        x = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :], mask=m, other=0.0)
        tl.store(dsrc_ptr + s * tl.cast(N, tl.int64) * (C * HIN * WIN) + at, tl.where(x > 0, acc, 0.0), mask=m)


@triton.jit
def _conv_weight(row, s, r, g1_ptr, x_ptr, out_ptr, conv_ptr, N, B: tl.constexpr, C: tl.constexpr,
                 HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr,
                 CS: tl.constexpr, CONVROW: tl.constexpr, BLOCK: tl.constexpr):
    """Program r = CS tap + part: tap's (co, ci) matrix of the conv's weight gradient, summed over
    output tiles part, part + CS, ... into conv[s, part]. Programs per tap rather than one (C, C, k, k)
    partial per program, which for a 5x5 conv would be 25 C^2 floats each."""
    k = _field(row, 1)
    tap = r // CS
    if tap < k * k:
        kh = tap // k
        kw = tap % k
        stride = _field(row, 4)
        base, sample, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
        pad = k // 2
        c = tl.arange(0, CP).to(tl.int64)
        cm = c < C
        gslot = g1_ptr + s * tl.cast(N, tl.int64) * (C * H * W)
        dw = tl.zeros([CP, CP], dtype=tl.float32)
        for tile in range(r % CS, tl.cdiv(N * H * W, BLOCK), CS):
            valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
            dy = tl.load(gslot + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :],
                         mask=valid[:, None] & cm[None, :], other=0.0)
            ih = oh * stride + (kh - pad)
            iw = ow * stride + (kw - pad)
            ok = valid & (ih >= 0) & (ih < hs) & (iw >= 0) & (iw < ws)
            x = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :],
                        mask=ok[:, None] & cm[None, :], other=0.0)
            dw += tl.dot(tl.trans(dy), tl.maximum(x, 0.0), input_precision="ieee")
        at = conv_ptr + (s * CS + r % CS) * CONVROW + tap + c[:, None] * (C * k * k) + c[None, :] * (k * k)
        tl.store(at, dw, mask=cm[:, None] & cm[None, :])


@triton.jit
def _fr_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, wpart_ptr, N, B: tl.constexpr,
               C: tl.constexpr, HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
               CP: tl.constexpr, G: tl.constexpr, WROW: tl.constexpr, WOFF1: tl.constexpr,
               BLOCK: tl.constexpr):
    """FactorizedReduce: output channels < C/2 are w0 on the even pixels, the rest w1 on the odd
    ones; a source pixel of mixed parity gets no gradient."""
    w0 = _field(row, 5)
    w1 = _field(row, 6)
    base, sample, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
    half = C // 2
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    plane = tl.cast(N, tl.int64) * (C * H * W)
    gslot = g1_ptr + s * plane
    wt = _matrix(flat_ptr + w0, 0, half, C, 1, C, CP) + _matrix(flat_ptr + w1, half, C, C, 1, C, CP)
    npix = tl.cast(N, tl.int64) * hs * ws
    for src_tile in range(g, tl.cdiv(npix, BLOCK), G):  # int64: a name apart from the int32 `tile`
        valid, n, ih, iw = _pixels(src_tile, hs, ws, npix, BLOCK)
        even = ((ih % 2) == 0) & ((iw % 2) == 0)
        odd = ((ih % 2) == 1) & ((iw % 2) == 1)
        take = (even[:, None] & (c < half)[None, :]) | (odd[:, None] & (c >= half)[None, :])
        m = valid[:, None] & cm[None, :]
        v = tl.load(gslot + (n * (C * H * W) + (ih // 2) * W + iw // 2)[:, None] + (c * (H * W))[None, :],
                    mask=m & take, other=0.0)
        at = (n * (C * hs * ws) + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :]
        x = tl.load(base + (n * sample + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :], mask=m, other=0.0)
        tl.store(dsrc_ptr + s * tl.cast(N, tl.int64) * (C * HIN * WIN) + at,
                 tl.where(x > 0, tl.dot(v, wt, input_precision="ieee"), 0.0), mask=m)
    acc_even = tl.zeros([CP, CP], dtype=tl.float32)
    acc_odd = tl.zeros([CP, CP], dtype=tl.float32)
    for tile in range(g, tl.cdiv(N * H * W, BLOCK), G):
        valid, n, oh, ow = _pixels(tile, H, W, N * H * W, BLOCK)
        m = valid[:, None] & cm[None, :]
        dy = tl.load(gslot + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :], mask=m, other=0.0)
        at = (n * sample + (2 * oh) * ws + 2 * ow)[:, None] + (c * (hs * ws))[None, :]
        even = tl.load(base + at, mask=m, other=0.0)
        odd = tl.load(base + at + ws + 1, mask=m, other=0.0)  # an even size: (2 oh + 1, 2 ow + 1) is inside
        acc_even += tl.dot(tl.trans(dy), tl.maximum(even, 0.0), input_precision="ieee")
        acc_odd += tl.dot(tl.trans(dy), tl.maximum(odd, 0.0), input_precision="ieee")
    row_at = wpart_ptr + (s * G + g) * WROW
    _store_matrix(row_at, acc_even, 0, half, C, 1, C, CP)
    _store_matrix(row_at + WOFF1, acc_odd, half, C, C, 1, C, CP)


@triton.jit
def _pool_to_src(row, s, g, g1_ptr, g2_ptr, dsrc_ptr, x_ptr, out_ptr, N, B: tl.constexpr, C: tl.constexpr,
                 HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr,
                 G: tl.constexpr, BLOCK: tl.constexpr):
    """Max: each output's gradient goes to its argmax tap (g2). Avg: spread over its in-image taps."""
    is_max = tl.load(row) == MAX_POOL
    k = _field(row, 1)
    stride = _field(row, 4)
    _, _, hs, ws = _source(x_ptr, out_ptr, _field(row, 3), N, B, C, HIN, WIN, H, W)
    pad = k // 2
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    plane = tl.cast(N, tl.int64) * (C * H * W)
    npix = tl.cast(N, tl.int64) * hs * ws
    for src_tile in range(g, tl.cdiv(npix, BLOCK), G):  # int64: a name apart from the int32 `tile`
        valid, n, ih, iw = _pixels(src_tile, hs, ws, npix, BLOCK)
        acc = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for kh in range(k):
            th = ih + (pad - kh)
            oh = th // stride
            rows_ok = valid & (th >= 0) & (th % stride == 0) & (oh < H)
            top = oh * stride - pad  # the window's first row, and its number of in-image rows
            rows = tl.minimum(top + k, hs) - tl.maximum(top, 0)
            for kw in range(k):
                tw = iw + (pad - kw)
                ow = tw // stride
                ok = rows_ok & (tw >= 0) & (tw % stride == 0) & (ow < W)
                left = ow * stride - pad
                cols = tl.minimum(left + k, ws) - tl.maximum(left, 0)
                at = s * plane + (n * (C * H * W) + oh * W + ow)[:, None] + (c * (H * W))[None, :]
                v = tl.load(g1_ptr + at, mask=ok[:, None] & cm[None, :], other=0.0)
                arg = tl.load(g2_ptr + at, mask=(ok & is_max)[:, None] & cm[None, :], other=-1.0)
                acc += tl.where(is_max, tl.where(arg == kh * k + kw, v, 0.0),
                                v / tl.maximum(rows * cols, 1).to(tl.float32)[:, None])
        at = (n * (C * hs * ws) + ih * ws + iw)[:, None] + (c * (hs * ws))[None, :]
        tl.store(dsrc_ptr + s * tl.cast(N, tl.int64) * (C * HIN * WIN) + at, acc, mask=valid[:, None] & cm[None, :])


@triton.jit
def _to_src_kernel(slots_ptr, g1_ptr, g2_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, wpart_ptr, conv_ptr, t, N,
                   B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr, WIN: tl.constexpr, H: tl.constexpr,
                   W: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, WROW: tl.constexpr,
                   WOFF1: tl.constexpr, CS: tl.constexpr, CONVROW: tl.constexpr, KKP: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Programs g < G: the input gradient and weight partials of tiles g, g + G, ...; programs
    G + r: a share of a conv's weight gradient (_conv_weight)."""
    g = tl.program_id(0)
    s = tl.cast(2 * (t - 2) + tl.program_id(1), tl.int64)
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    if (g >= G) & (kind == CONV):
        _conv_weight(row, s, tl.cast(g - G, tl.int64), g1_ptr, x_ptr, out_ptr, conv_ptr, N, B, C, HIN, WIN, H, W,
                     CP, CS, CONVROW, BLOCK)
    if (g >= G) | (kind == NULL) | ((kind == SKIP) & (tl.load(row + 4) == 1)):  # identity: _head_kernel's
        return
    if (kind == SEP) | (kind == DIL):
        _dw_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, wpart_ptr, N, B, C, HIN, WIN, H, W, CP,
                   G, WROW, KKP, BLOCK)
    elif kind == CONV:
        _conv_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, N, B, C, HIN, WIN, H, W, CP, G, BLOCK)
    elif kind == SKIP:
        _fr_to_src(row, s, g, g1_ptr, x_ptr, out_ptr, dsrc_ptr, flat_ptr, wpart_ptr, N, B, C, HIN, WIN, H, W, CP,
                   G, WROW, WOFF1, BLOCK)
    else:
        _pool_to_src(row, s, g, g1_ptr, g2_ptr, dsrc_ptr, x_ptr, out_ptr, N, B, C, HIN, WIN, H, W, CP, G, BLOCK)


@triton.jit
def _input_grad_kernel(slots_ptr, dsrc_ptr, dx_ptr, N, B: tl.constexpr, C: tl.constexpr, HIN: tl.constexpr,
                       WIN: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    j = tl.program_id(1)
    c = tl.arange(0, CP).to(tl.int64)
    cm = c < C
    plane_in = tl.cast(N, tl.int64) * (C * HIN * WIN)
    for tile in range(g, tl.cdiv(N * HIN * WIN, BLOCK), G):
        valid, n, ih, iw = _pixels(tile, HIN, WIN, N * HIN * WIN, BLOCK)
        m = valid[:, None] & cm[None, :]
        at = (n * (C * HIN * WIN) + ih * WIN + iw)[:, None] + (c * (HIN * WIN))[None, :]
        acc = tl.zeros([BLOCK, CP], dtype=tl.float32)
        for s in range(2 * B):
            reads = tl.load(slots_ptr + s * FIELDS + 3) == j
            acc += tl.load(dsrc_ptr + tl.cast(s, tl.int64) * plane_in + at, mask=m & reads, other=0.0)
        tl.store(dx_ptr + j * plane_in + at, acc, mask=m)


@triton.jit
def _weight_reduce_kernel(slots_ptr, wpart_ptr, conv_ptr, grad_ptr, B: tl.constexpr, C: tl.constexpr,
                          G: tl.constexpr, WROW: tl.constexpr, WOFF1: tl.constexpr, WOFF2: tl.constexpr,
                          WOFF3: tl.constexpr, CS: tl.constexpr, CONVROW: tl.constexpr, BLOCK_E: tl.constexpr):
    """Program (4 s + j, e-block): weight j of slot s, the sum of its G partial rows (a conv's
    weight: of its CS rows in conv). A slot repeating its node's other slot has the same offsets: the
    node's first slot adds both slots' sums, the second adds nothing."""
    s = tl.cast(tl.program_id(0) // 4, tl.int64)
    j = tl.program_id(0) % 4
    row = slots_ptr + s * FIELDS
    offset = tl.cast(tl.load(row + 5 + j), tl.int64)
    other = s + 1 - 2 * (s % 2)
    shared = tl.load(slots_ptr + other * FIELDS + 5 + j) == offset
    if (offset < 0) | ((s % 2 == 1) & shared):
        return
    kind = tl.load(row)
    k = _field(row, 1)
    conv = kind == CONV
    size = tl.where(conv, C * C * k * k,
                    tl.where(kind == SKIP, (C // 2) * C, tl.where(j % 2 == 0, C * k * k, C * C)))
    col = tl.where(j == 0, 0, tl.where(j == 1, WOFF1, tl.where(j == 2, WOFF2, WOFF3)))
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    m = e < size
    mine = tl.where(conv, conv_ptr + s * CS * CONVROW, wpart_ptr + s * G * WROW + col)
    theirs = tl.where(conv, conv_ptr + other * CS * CONVROW, wpart_ptr + other * G * WROW + col)
    rows = tl.where(conv, CS, G)
    pitch = tl.where(conv, CONVROW, WROW)
    acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    for g in range(rows):
        acc += tl.load(mine + g * pitch + e, mask=m, other=0.0)
    for g in range(rows):
        acc += tl.load(theirs + g * pitch + e, mask=m & shared, other=0.0)
    at = grad_ptr + offset + e
    tl.store(at, tl.load(at, mask=m, other=0.0) + acc, mask=m)
