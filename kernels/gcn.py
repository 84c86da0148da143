"""Batched GCN of the policy: two graph convolutions and the linear head for B small graphs.

    Z1 = A (X W1) + b1,  H1 = relu(Z1),  H2 = A (H1 W2) + b2,  L = H2 Wh + bh

A (B, N, N), X (B, N, F), weights stored (in, out). Graphs have 6-7 nodes, far below a matrix
unit's tile, so each program stacks G graphs into ROWS = G * NP rows and applies the adjacency as
one block-diagonal (ROWS, ROWS) matrix: every step is then a single `tl.dot`. Padded nodes have
zero features and zero adjacency columns, so they never reach a real node. The backward kernel
recomputes the forward (cheaper than storing it) and writes, per program, one row of partial
weight gradients that `reduce.sum_rows` adds in a fixed order (deterministic, no atomics).
"""
import torch
import triton
import triton.language as tl

from .reduce import sum_rows

ROWS = 64  # rows per program: a multiple of 16 so tl.dot maps to the matrix units


@triton.jit
def _load_matrix(ptr, rows, cols, RP: tl.constexpr, CP: tl.constexpr):
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    m = (r[:, None] < rows) & (c[None, :] < cols)
    return tl.load(ptr + r[:, None] * cols + c[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _load_vector(ptr, n, NP: tl.constexpr):
    i = tl.arange(0, NP)
    return tl.load(ptr + i, mask=i < n, other=0.0).to(tl.float32)


@triton.jit
def _store_matrix(ptr, value, rows, cols, RP: tl.constexpr, CP: tl.constexpr):
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    tl.store(ptr + r[:, None] * cols + c[None, :], value, mask=(r[:, None] < rows) & (c[None, :] < cols))


@triton.jit
def _graph_block(adj_ptr, x_ptr, B, N, F, NP: tl.constexpr, ROWS: tl.constexpr, FP: tl.constexpr):
    """This program's block-diagonal adjacency (ROWS, ROWS), features (ROWS, FP) and row indices."""
    r = tl.arange(0, ROWS)
    graph = tl.program_id(0) * (ROWS // NP) + r // NP
    node = r % NP
    real = (graph < B) & (node < N)
    same_graph = (r[:, None] // NP) == (r[None, :] // NP)
    a_mask = same_graph & real[:, None] & real[None, :]
    adj = tl.load(adj_ptr + graph[:, None].to(tl.int64) * N * N + node[:, None] * N + node[None, :],
                  mask=a_mask, other=0.0).to(tl.float32)
    f = tl.arange(0, FP)
    row = graph.to(tl.int64) * N + node
    x = tl.load(x_ptr + row[:, None] * F + f[None, :], mask=real[:, None] & (f[None, :] < F),
                other=0.0).to(tl.float32)
    return adj, x, row, real


@triton.jit
def _fwd_kernel(adj_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wh_ptr, bh_ptr, out_ptr,
                B, N, F, H1, H2, O, NP: tl.constexpr, ROWS: tl.constexpr, FP: tl.constexpr,
                H1P: tl.constexpr, H2P: tl.constexpr, OP: tl.constexpr):
    adj, x, row, real = _graph_block(adj_ptr, x_ptr, B, N, F, NP, ROWS, FP)
    w1 = _load_matrix(w1_ptr, F, H1, FP, H1P)
    w2 = _load_matrix(w2_ptr, H1, H2, H1P, H2P)
    wh = _load_matrix(wh_ptr, H2, O, H2P, OP)
    z1 = tl.dot(adj, tl.dot(x, w1, input_precision="ieee"), input_precision="ieee")
    h1 = tl.maximum(z1 + _load_vector(b1_ptr, H1, H1P)[None, :], 0.0)
    h2 = tl.dot(adj, tl.dot(h1, w2, input_precision="ieee"), input_precision="ieee")
    h2 += _load_vector(b2_ptr, H2, H2P)[None, :]
    logits = tl.dot(h2, wh, input_precision="ieee") + _load_vector(bh_ptr, O, OP)[None, :]
    o = tl.arange(0, OP)
    tl.store(out_ptr + row[:, None] * O + o[None, :], logits.to(out_ptr.dtype.element_ty),
             mask=real[:, None] & (o[None, :] < O))


@triton.jit
def _bwd_kernel(adj_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wh_ptr, dl_ptr, dx_ptr, part_ptr,
                B, N, F, H1, H2, O, PART_COLS, NP: tl.constexpr, ROWS: tl.constexpr,
                FP: tl.constexpr, H1P: tl.constexpr, H2P: tl.constexpr, OP: tl.constexpr):
    adj, x, row, real = _graph_block(adj_ptr, x_ptr, B, N, F, NP, ROWS, FP)
    w1 = _load_matrix(w1_ptr, F, H1, FP, H1P)
    w2 = _load_matrix(w2_ptr, H1, H2, H1P, H2P)
    wh = _load_matrix(wh_ptr, H2, O, H2P, OP)
    # Recompute the forward.
    z1 = tl.dot(adj, tl.dot(x, w1, input_precision="ieee"), input_precision="ieee")
    z1 += _load_vector(b1_ptr, H1, H1P)[None, :]
    h1 = tl.maximum(z1, 0.0)
    h2 = tl.dot(adj, tl.dot(h1, w2, input_precision="ieee"), input_precision="ieee")
    h2 += _load_vector(b2_ptr, H2, H2P)[None, :]
    # Backward; padded rows carry zero gradient (dL is masked and A^T has zero padded rows).
    o = tl.arange(0, OP)
    dl = tl.load(dl_ptr + row[:, None] * O + o[None, :], mask=real[:, None] & (o[None, :] < O),
                 other=0.0).to(tl.float32)
    adj_t = tl.trans(adj)
    d_wh = tl.dot(tl.trans(h2), dl, input_precision="ieee")
    d_h2 = tl.dot(dl, tl.trans(wh), input_precision="ieee")
    d_p2 = tl.dot(adj_t, d_h2, input_precision="ieee")
    d_w2 = tl.dot(tl.trans(h1), d_p2, input_precision="ieee")
    d_z1 = tl.where(z1 > 0, tl.dot(d_p2, tl.trans(w2), input_precision="ieee"), 0.0)
    d_p1 = tl.dot(adj_t, d_z1, input_precision="ieee")
    d_w1 = tl.dot(tl.trans(x), d_p1, input_precision="ieee")
    d_x = tl.dot(d_p1, tl.trans(w1), input_precision="ieee")
    f = tl.arange(0, FP)
    tl.store(dx_ptr + row[:, None] * F + f[None, :], d_x.to(dx_ptr.dtype.element_ty),
             mask=real[:, None] & (f[None, :] < F))
    # One row of partial parameter gradients, padded layout: W1 | b1 | W2 | b2 | Wh | bh.
    base = part_ptr + tl.program_id(0).to(tl.int64) * PART_COLS
    _store_matrix(base, d_w1, FP, H1P, FP, H1P)
    base += FP * H1P
    h1i = tl.arange(0, H1P)
    tl.store(base + h1i, tl.sum(d_z1, axis=0))
    base += H1P
    _store_matrix(base, d_w2, H1P, H2P, H1P, H2P)
    base += H1P * H2P
    h2i = tl.arange(0, H2P)
    tl.store(base + h2i, tl.sum(d_h2, axis=0))
    base += H2P
    _store_matrix(base, d_wh, H2P, OP, H2P, OP)
    base += H2P * OP
    tl.store(base + o, tl.sum(dl, axis=0))


def _padded(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _sizes(adj, x, w1, w2, wh):
    b, n, _ = adj.shape
    np_ = triton.next_power_of_2(n)
    if np_ > ROWS:
        raise ValueError(f"graphs of {n} nodes exceed one program's {ROWS} rows")
    f, h1, h2, o = x.shape[2], w1.shape[1], w2.shape[1], wh.shape[1]
    return b, n, f, h1, h2, o, dict(NP=np_, ROWS=ROWS, FP=_padded(f), H1P=_padded(h1), H2P=_padded(h2), OP=_padded(o))


def forward(adj, x, w1, b1, w2, b2, wh, bh) -> torch.Tensor:
    """All tensors contiguous; returns logits (B, N, O) in x's dtype."""
    b, n, f, h1, h2, o, meta = _sizes(adj, x, w1, w2, wh)
    out = torch.empty((b, n, o), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(b, ROWS // meta["NP"]),)
    _fwd_kernel[grid](adj, x, w1, b1, w2, b2, wh, bh, out, b, n, f, h1, h2, o, **meta)
    return out


def backward(adj, x, w1, b1, w2, b2, wh, d_logits):
    """dX (x's dtype) and float32 dW1, db1, dW2, db2, dWh, dbh; the adjacency is not differentiated."""
    b, n, f, h1, h2, o, meta = _sizes(adj, x, w1, w2, wh)
    fp, h1p, h2p, op = meta["FP"], meta["H1P"], meta["H2P"], meta["OP"]
    shapes = [(fp, h1p), (h1p,), (h1p, h2p), (h2p,), (h2p, op), (op,)]
    cols = sum(int(torch.Size(s).numel()) for s in shapes)
    grid = (triton.cdiv(b, ROWS // meta["NP"]),)
    part = torch.empty((grid[0], cols), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    _bwd_kernel[grid](adj, x, w1, b1, w2, b2, wh, d_logits, dx, part, b, n, f, h1, h2, o, cols, **meta)
    flat = sum_rows(part)
    grads, start = [], 0
    for shape in shapes:
        size = int(torch.Size(shape).numel())
        grads.append(flat[start:start + size].view(shape))
        start += size
    d_w1, d_b1, d_w2, d_b2, d_wh, d_bh = grads
    return dx, d_w1[:f, :h1], d_b1[:h1], d_w2[:h1, :h2], d_b2[:h2], d_wh[:h2, :o], d_bh[:o]
