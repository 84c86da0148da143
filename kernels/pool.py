"""K x K max / average pooling with padding K // 2 (the average excludes the padding).

The max forward can store, per output, the flat input position of its maximum (the first one in
window order on ties, as torch does); both backwards are gathers: each input pixel sums the
outputs whose window covers it, so programs never write the same address.
"""
import torch
import triton
import triton.language as tl


def out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def _block(pixels: int) -> int:
    return max(32, min(512, triton.next_power_of_2(pixels)))


@triton.jit
def window_count(oh, ow, H, W, K: tl.constexpr, STRIDE: tl.constexpr):
    """Number of in-image taps of the windows at (oh, ow): the average's divisor."""
    PAD: tl.constexpr = K // 2
    h0 = oh * STRIDE - PAD
    w0 = ow * STRIDE - PAD
    rows = tl.minimum(h0 + K, H) - tl.maximum(h0, 0)
    cols = tl.minimum(w0 + K, W) - tl.maximum(w0, 0)
    return tl.maximum(rows * cols, 1).to(tl.float32)  # >= 1 also for masked-out lanes


@triton.jit
def pool_window(x_base, oh, ow, valid, H, W, IS_MAX: tl.constexpr, K: tl.constexpr,
                STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """(pooled value, flat argmax) of the windows at (oh, ow) of one plane, float32."""
    PAD: tl.constexpr = K // 2
    if IS_MAX:
        best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    else:
        best = tl.zeros([BLOCK], dtype=tl.float32)
    where = tl.zeros([BLOCK], dtype=tl.int32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD + kh
        row_ok = valid & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD + kw
            m = row_ok & (iw >= 0) & (iw < W)
            if IS_MAX:
                v = tl.load(x_base + ih * W + iw, mask=m, other=float("-inf")).to(tl.float32)
                better = v > best
                best = tl.where(better, v, best)
                where = tl.where(better, ih * W + iw, where)
            else:
                best += tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
    if not IS_MAX:
        best = best / window_count(oh, ow, H, W, K, STRIDE)
    return best, where


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, idx_ptr, H, W, HO, WO, IS_MAX: tl.constexpr, SAVE_INDEX: tl.constexpr,
                K: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < HO * WO
    y, where = pool_window(x_ptr + plane * H * W, offs // WO, offs % WO, valid, H, W, IS_MAX, K, STRIDE, BLOCK)
    tl.store(y_ptr + plane * HO * WO + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
    if SAVE_INDEX:
        tl.store(idx_ptr + plane * HO * WO + offs, where, mask=valid)


@triton.jit
def _bwd_kernel(dy_ptr, idx_ptr, dx_ptr, H, W, HO, WO, IS_MAX: tl.constexpr, K: tl.constexpr,
                STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    PAD: tl.constexpr = K // 2
    plane = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    ih = offs // W
    iw = offs % W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(K):
        th = ih + PAD - kh
        oh = th // STRIDE
        row_ok = valid & (th >= 0) & (th % STRIDE == 0) & (oh < HO)
        for kw in tl.static_range(K):
            tw = iw + PAD - kw
            ow = tw // STRIDE
            m = row_ok & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
            g = tl.load(dy_ptr + plane * HO * WO + oh * WO + ow, mask=m, other=0.0).to(tl.float32)
            if IS_MAX:
                src = tl.load(idx_ptr + plane * HO * WO + oh * WO + ow, mask=m, other=-1)
                acc += tl.where(src == offs, g, 0.0)
            else:
                acc += g / window_count(oh, ow, H, W, K, STRIDE)
    tl.store(dx_ptr + plane * H * W + offs, acc.to(dx_ptr.dtype.element_ty), mask=valid)


def forward(x: torch.Tensor, kind: str, k: int, stride: int, save_index: bool):
    """x (N, C, H, W) contiguous -> (y, argmax int32 or None)."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, k, stride), out_size(w, k, stride)
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    is_max = kind == "max"
    idx = torch.empty(y.shape, device=x.device, dtype=torch.int32) if (is_max and save_index) else y
    block = _block(ho * wo)
    _fwd_kernel[(n * c, triton.cdiv(ho * wo, block))](
        x, y, idx, h, w, ho, wo, IS_MAX=is_max, SAVE_INDEX=is_max and save_index, K=k, STRIDE=stride, BLOCK=block)
    return y, (idx if is_max and save_index else None)


def backward(dy: torch.Tensor, index, input_shape, kind: str, k: int, stride: int) -> torch.Tensor:
    n, c, h, w = input_shape
    dx = torch.empty(input_shape, device=dy.device, dtype=dy.dtype)
    block = _block(h * w)
    _bwd_kernel[(n * c, triton.cdiv(h * w, block))](
        dy, index if index is not None else dy, dx, h, w, dy.shape[2], dy.shape[3],
        IS_MAX=kind == "max", K=k, STRIDE=stride, BLOCK=block)
    return dx
