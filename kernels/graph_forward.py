"""Forward of one graph-engine cell (natfast/graph/): launches that read the architecture from a
device slot table (natfast/graph/table.py) instead of being chosen on the host, so the launch
sequence is the same for every genotype and one CUDA graph replays them all.

Per node t, for its two slots s = slot0 + program_id(0) (semantics: natfast/graph/reference.py,
buffers: natfast/graph/buffers.py):

  _first_kernel   relu + depthwise (w0) -> a1 -> pointwise (w1) for sep/dil, k x k conv of relu(x)
                  for conv, FactorizedReduce for skip at stride 2, max/avg pool for pools: b1, and
                  per-tile BN partials of b1
  _stats_kernel   partials -> stats[J, s] = (mean, rstd), J = 0 (b1) or 1 (b2)
  _second_kernel  sep only: relu(BN(b1)) -> depthwise (w2) -> a2 -> pointwise (w3) -> b2, partials
  _stats_kernel   J = 1
  _node_kernel    out block t-2 = sum over the slots of BN(b1), BN(b2) (sep), the source (skip at
                  stride 1), nothing (null)

A program holds all (padded) channels of a block of BP output pixels, so the pointwise and conv
stages are one `tl.dot` per tap. A program whose slot the stage does not concern returns at once.
BN statistics are deterministic without float atomics: each tile writes its (mean, M2) per
channel, and _stats_kernel merges the tiles in a fixed order (Chan et al.'s pairwise update).

Lanes: the last grid axis is the lane. Lane l runs its own architecture (its own slot table) on its
own copy of every buffer, at l times one lane's size (natfast/graph/buffers.py): scoring many
architectures at once is the same launches with a wider grid; training runs one lane.
"""
import triton
import triton.language as tl

# natfast.cell_plan.KINDS (constexpr: the compiler reads no other globals)
NULL, SKIP, MAX_POOL, AVG_POOL, SEP, DIL, CONV = (tl.constexpr(i) for i in range(7))
FIELDS = tl.constexpr(9)  # len(natfast.graph.table.SLOT_FIELDS)
EPS = tl.constexpr(1e-5)


@triton.jit
def _lane(axis: tl.constexpr, slots_ptr, slots_per_lane):
    """This program's lane (int64) and its slot table."""
    lane = tl.program_id(axis).to(tl.int64)
    return lane, slots_ptr + lane * slots_per_lane * FIELDS


@triton.jit
def _pixels(tile, N, H: tl.constexpr, W: tl.constexpr, BP: tl.constexpr):
    """The tile's output pixels over (N, H, W): validity, sample, row, column."""
    p = tile * BP + tl.arange(0, BP)
    valid = p < N * H * W
    n = p // (H * W)
    oh = (p // W) % H
    ow = p % W
    return valid, n, oh, ow


@triton.jit
def _source(x_ptr, out_ptr, src, N, NODES: tl.constexpr, C: tl.constexpr, H_IN: tl.constexpr,
            W_IN: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Base, sample stride and size of node `src`: x[src] (Hin x Win) or out's block src - 2."""
    is_x = src < 2
    base = tl.where(is_x, x_ptr + src.to(tl.int64) * N * C * H_IN * W_IN, out_ptr + (src - 2).to(tl.int64) * C * H * W)
    sample = tl.where(is_x, C * H_IN * W_IN, NODES * C * H * W).to(tl.int64)
    hs = tl.where(is_x, H_IN, H)
    ws = tl.where(is_x, W_IN, W)
    return base, sample, hs, ws


@triton.jit
def _tap(base, sample, hs, ws, n, ih, iw, valid, c, cm):
    """[CP, BP] of the source at (n, c, ih, iw); zero outside the image and the channels, and a
    mask of the in-image pixels."""
    ok = valid & (ih >= 0) & (ih < hs) & (iw >= 0) & (iw < ws)
    addr = n.to(tl.int64)[None, :] * sample + (c * hs * ws)[:, None] + (ih * ws + iw)[None, :]
    return tl.load(base + addr, mask=cm[:, None] & ok[None, :], other=0.0), ok


@triton.jit
def _matrix(flat_ptr, offset, rows_from, rows_to, row_stride, col_stride, C: tl.constexpr, CP: tl.constexpr):
    """[CP, CP] weights: entry (r, i) = flat[offset + (r - rows_from) * row_stride + i * col_stride]
    for rows in [rows_from, rows_to) and columns i < C, zero elsewhere."""
    r = tl.arange(0, CP)
    i = tl.arange(0, CP)
    ok = ((r >= rows_from) & (r < rows_to))[:, None] & (i < C)[None, :]
    return tl.load(flat_ptr + offset + (r - rows_from)[:, None] * row_stride + (i * col_stride)[None, :],
                   mask=ok, other=0.0)


@triton.jit
def _slot_addr(s, n, oh, ow, c, N, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """[CP, BP] offsets of (n, c, oh, ow) in slot s of an (NS, N, C, H, W) buffer."""
    return s.to(tl.int64) * N * C * H * W + (n * (C * H * W) + oh * W + ow)[None, :] + (c * H * W)[:, None]


@triton.jit
def _mm(w, x):
    # IEEE float32 products: the reference is float32 and tf32 would miss its tolerances.
    return tl.dot(w, x, input_precision="ieee")


@triton.jit
def _store_with_partials(y, dst_ptr, part_ptr, s, i, tile, T, n, oh, ow, valid, c, cm, N,
                         C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, BP: tl.constexpr):
    """Stores y into slot s of an (NS, N, C, H, W) buffer and this tile's (mean, M2) per channel
    into part[i, tile]."""
    tl.store(dst_ptr + _slot_addr(s, n, oh, ow, c, N, C, H, W), y, mask=cm[:, None] & valid[None, :])
    count = tl.minimum(N * H * W - tile * BP, BP).to(tl.float32)
    y = tl.where(valid[None, :], y, 0.0)
    mean = tl.sum(y, 1) / count
    d = tl.where(valid[None, :], y - mean[:, None], 0.0)
    at = part_ptr + (i * T + tile) * 2 * CP + c
    tl.store(at, mean)
    tl.store(at + CP, tl.sum(d * d, 1))


@triton.jit
def _first_kernel(x_ptr, out_ptr, a1_ptr, b1_ptr, part_ptr, flat_ptr, slots_ptr, slot0, N, T,
                  NODES: tl.constexpr, C: tl.constexpr, H_IN: tl.constexpr, W_IN: tl.constexpr,
                  H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, BP: tl.constexpr):
    i = tl.program_id(0)
    tile = tl.program_id(1)
    lane, slots_ptr = _lane(2, slots_ptr, 2 * NODES)
    s = slot0 + i
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    stride = tl.load(row + 4)
    if (kind == NULL) | ((kind == SKIP) & (stride == 1)):  # nothing saved: the node sum reads the source
        return
    x_ptr += lane * N * (2 * C * H_IN * W_IN)
    out_ptr += lane * N * (NODES * C * H * W)
    a1_ptr += lane * N * (2 * NODES * C * H * W)
    b1_ptr += lane * N * (2 * NODES * C * H * W)
    part_ptr += lane * T * (2 * 2 * CP)
    k = tl.load(row + 1)
    dil = tl.load(row + 2)
    src = tl.load(row + 3)
    w0 = tl.load(row + 5)
    w1 = tl.load(row + 6)
    valid, n, oh, ow = _pixels(tile, N, H, W, BP)
    base, sample, hs, ws = _source(x_ptr, out_ptr, src, N, NODES, C, H_IN, W_IN, H, W)
    c = tl.arange(0, CP)
    cm = c < C
    if (kind == SEP) | (kind == DIL):
        pad = dil * (k // 2)
        a = tl.zeros([CP, BP], dtype=tl.float32)
        for kh in range(k):
            ih = oh * stride - pad + kh * dil
            for kw in range(k):
                v, _ = _tap(base, sample, hs, ws, n, ih, ow * stride - pad + kw * dil, valid, c, cm)
                wv = tl.load(flat_ptr + w0 + c * (k * k) + kh * k + kw, mask=cm, other=0.0)
                a += wv[:, None] * tl.maximum(v, 0.0)
        tl.store(a1_ptr + _slot_addr(s, n, oh, ow, c, N, C, H, W), a, mask=cm[:, None] & valid[None, :])
        y = _mm(_matrix(flat_ptr, w1, 0, C, C, 1, C, CP), a)
    elif kind == CONV:
        pad = k // 2
        y = tl.zeros([CP, BP], dtype=tl.float32)
        for kh in range(k):
            ih = oh * stride - pad + kh
            for kw in range(k):
                v, _ = _tap(base, sample, hs, ws, n, ih, ow * stride - pad + kw, valid, c, cm)
                # weight (C, C, k, k): tap (kh, kw) is the matrix (co, ci)
                wt = _matrix(flat_ptr, w0 + kh * k + kw, 0, C, C * k * k, k * k, C, CP)
                y += _mm(wt, tl.maximum(v, 0.0))
    elif kind == SKIP:  # stride 2: FactorizedReduce, halves (C/2, C) at even and odd pixels
        even, _ = _tap(base, sample, hs, ws, n, 2 * oh, 2 * ow, valid, c, cm)
        odd, _ = _tap(base, sample, hs, ws, n, 2 * oh + 1, 2 * ow + 1, valid, c, cm)
        y = _mm(_matrix(flat_ptr, w0, 0, C // 2, C, 1, C, CP), tl.maximum(even, 0.0))
        y += _mm(_matrix(flat_ptr, w1, C // 2, C, C, 1, C, CP), tl.maximum(odd, 0.0))
    else:  # max / avg pool (both computed, the kind picks); the average divides by the in-image taps
        pad = k // 2
        top = tl.full([CP, BP], float("-inf"), dtype=tl.float32)
        total = tl.zeros([CP, BP], dtype=tl.float32)
        taps = tl.zeros([BP], dtype=tl.float32)
        for kh in range(k):
            ih = oh * stride - pad + kh
            for kw in range(k):
                v, ok = _tap(base, sample, hs, ws, n, ih, ow * stride - pad + kw, valid, c, cm)
                top = tl.where(ok[None, :], tl.maximum(top, v), top)
                total += v
                taps += ok.to(tl.float32)
        y = tl.where(kind == MAX_POOL, top, total / tl.maximum(taps, 1.0)[None, :])
        y = tl.where(cm[:, None] & valid[None, :], y, 0.0)
    _store_with_partials(y, b1_ptr, part_ptr, s, i, tile, T, n, oh, ow, valid, c, cm, N, C, H, W, CP, BP)


@triton.jit
def _second_kernel(b1_ptr, a2_ptr, b2_ptr, stats_ptr, part_ptr, flat_ptr, slots_ptr, slot0, N, T,
                   NODES: tl.constexpr, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                   CP: tl.constexpr, BP: tl.constexpr):
    i = tl.program_id(0)
    tile = tl.program_id(1)
    lane, slots_ptr = _lane(2, slots_ptr, 2 * NODES)
    s = slot0 + i
    row = slots_ptr + s * FIELDS
    if tl.load(row) != SEP:
        return
    b1_ptr += lane * N * (2 * NODES * C * H * W)
    a2_ptr += lane * N * (2 * NODES * C * H * W)
    b2_ptr += lane * N * (2 * NODES * C * H * W)
    stats_ptr += lane * (2 * 2 * NODES * 2 * C)
    part_ptr += lane * T * (2 * 2 * CP)
    k = tl.load(row + 1)
    w2 = tl.load(row + 7)
    w3 = tl.load(row + 8)
    valid, n, oh, ow = _pixels(tile, N, H, W, BP)
    c = tl.arange(0, CP)
    cm = c < C
    mean = tl.load(stats_ptr + s * 2 * C + c, mask=cm, other=0.0)
    rstd = tl.load(stats_ptr + s * 2 * C + C + c, mask=cm, other=0.0)
    base = b1_ptr + s.to(tl.int64) * N * C * H * W
    pad = k // 2
    a = tl.zeros([CP, BP], dtype=tl.float32)
    for kh in range(k):
        ih = oh - pad + kh
        for kw in range(k):
            v, ok = _tap(base, C * H * W, H, W, n, ih, ow - pad + kw, valid, c, cm)
            # relu(BN(b1)) is zero-padded (the padding is applied after the BN)
            v = tl.where(cm[:, None] & ok[None, :], tl.maximum((v - mean[:, None]) * rstd[:, None], 0.0), 0.0)
            wv = tl.load(flat_ptr + w2 + c * (k * k) + kh * k + kw, mask=cm, other=0.0)
            a += wv[:, None] * v
    tl.store(a2_ptr + _slot_addr(s, n, oh, ow, c, N, C, H, W), a, mask=cm[:, None] & valid[None, :])
    y = _mm(_matrix(flat_ptr, w3, 0, C, C, 1, C, CP), a)
    _store_with_partials(y, b2_ptr, part_ptr, s, i, tile, T, n, oh, ow, valid, c, cm, N, C, H, W, CP, BP)


@triton.jit
def _stats_kernel(part_ptr, stats_ptr, slots_ptr, slot0, N, T, J: tl.constexpr, NS: tl.constexpr,
                  C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, BP: tl.constexpr,
                  TB: tl.constexpr):
    """stats[J, s] from part[i, 0..T): TB tiles at a time, each block combined exactly, blocks
    merged in order."""
    i = tl.program_id(0)
    lane, slots_ptr = _lane(1, slots_ptr, NS)
    part_ptr += lane * T * (2 * 2 * CP)
    stats_ptr += lane * (2 * NS * 2 * C)
    s = slot0 + i
    row = slots_ptr + s * FIELDS
    kind = tl.load(row)
    if J == 0:
        skip = (kind == NULL) | ((kind == SKIP) & (tl.load(row + 4) == 1))
    else:
        skip = kind != SEP
    if skip:
        return
    c = tl.arange(0, CP)
    count = tl.zeros([CP], dtype=tl.float32)
    mean = tl.zeros([CP], dtype=tl.float32)
    m2 = tl.zeros([CP], dtype=tl.float32)
    for t0 in range(0, T, TB):
        t = t0 + tl.arange(0, TB)
        ok = t < T
        cnt = tl.where(ok, tl.minimum(N * H * W - t * BP, BP), 0).to(tl.float32)
        at = part_ptr + (i * T + t)[:, None] * 2 * CP + c[None, :]
        tile_mean = tl.load(at, mask=ok[:, None], other=0.0)
        tile_m2 = tl.load(at + CP, mask=ok[:, None], other=0.0)
        block_count = tl.sum(cnt, 0)
        block_mean = tl.sum(cnt[:, None] * tile_mean, 0) / block_count
        d = tile_mean - block_mean[None, :]
        block_m2 = tl.sum(tile_m2 + cnt[:, None] * d * d, 0)
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
    cm = c < C
    at = stats_ptr + (J * NS + s) * 2 * C + c
    tl.store(at, mean, mask=cm)
    tl.store(at + C, 1.0 / tl.sqrt(m2 / count + EPS), mask=cm)


@triton.jit
def _node_kernel(x_ptr, out_ptr, b1_ptr, b2_ptr, stats_ptr, slots_ptr, slot0, N,
                 NODES: tl.constexpr, C: tl.constexpr, H_IN: tl.constexpr, W_IN: tl.constexpr,
                 H: tl.constexpr, W: tl.constexpr, CP: tl.constexpr, BP: tl.constexpr):
    """Out block slot0 / 2 = the sum of the node's two slots (zero when both are null). Which tensor
    a slot adds is chosen by load masks: the loads not taken read nothing."""
    tile = tl.program_id(0)
    lane, slots_ptr = _lane(1, slots_ptr, 2 * NODES)
    x_ptr += lane * N * (2 * C * H_IN * W_IN)
    out_ptr += lane * N * (NODES * C * H * W)
    b1_ptr += lane * N * (2 * NODES * C * H * W)
    b2_ptr += lane * N * (2 * NODES * C * H * W)
    stats_ptr += lane * (2 * 2 * NODES * 2 * C)
    valid, n, oh, ow = _pixels(tile, N, H, W, BP)
    c = tl.arange(0, CP)
    cm = c < C
    m = cm[:, None] & valid[None, :]
    acc = tl.zeros([CP, BP], dtype=tl.float32)
    for i in tl.static_range(2):
        s = slot0 + i
        row = slots_ptr + s * FIELDS
        kind = tl.load(row)
        stride = tl.load(row + 4)
        identity = (kind == SKIP) & (stride == 1)
        sep = kind == SEP
        bn1 = (kind != NULL) & (kind != SEP) & ((kind != SKIP) | (stride != 1))
        base, sample, hs, ws = _source(x_ptr, out_ptr, tl.load(row + 3), N, NODES, C, H_IN, W_IN, H, W)
        v, _ = _tap(base, sample, hs, ws, n, oh, ow, valid & identity, c, cm)
        # BN(b2) for sep, BN(b1) for the other kinds that save a b1
        stats = stats_ptr + (sep.to(tl.int32) * 2 * NODES + s) * 2 * C + c
        mean = tl.load(stats, mask=cm & (bn1 | sep), other=0.0)
        rstd = tl.load(stats + C, mask=cm & (bn1 | sep), other=0.0)
        at = _slot_addr(s, n, oh, ow, c, N, C, H, W)
        y = tl.load(b1_ptr + at, mask=m & bn1, other=0.0) + tl.load(b2_ptr + at, mask=m & sep, other=0.0)
        acc += v + (y - mean[:, None]) * rstd[:, None]
    at = ((slot0 // 2) * (C * H * W) + n.to(tl.int64) * (NODES * C * H * W) + oh * W + ow)[None, :] + (c * H * W)[:, None]
    tl.store(out_ptr + at, acc, mask=m)
