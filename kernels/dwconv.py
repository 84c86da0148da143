"""Fused ReLU + depthwise convolution y = conv2d(relu(x), w, groups=C), 'same' padding.

x (N, C, H, W) contiguous, w (C, 1, K, K) contiguous, K in {3, 5}, any stride and dilation;
padding = dilation * (K - 1) // 2. Accumulation is float32 whatever the input dtype.
ReLU is applied on load, so relu(x) is never written to memory, and the input gradient is masked
by x > 0 in the same pass (torch's relu backward convention: zero gradient at x == 0).
"""
import torch
import triton
import triton.language as tl

from .reduce import sum_rows


def out_size(size: int, k: int, stride: int, dilation: int) -> int:
    pad = dilation * (k - 1) // 2
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _block(pixels: int) -> int:
    return max(32, min(512, triton.next_power_of_2(pixels)))


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, y_ptr, C, H, W, HO, WO,
                K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, PAD: tl.constexpr,
                BLOCK: tl.constexpr):
    plane = tl.program_id(0)  # n * C + c
    c = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < HO * WO
    oh = offs // WO
    ow = offs % WO
    x_base = x_ptr + plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - PAD + kh * DIL
        row_ok = valid & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - PAD + kw * DIL
            m = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + c * K * K + kh * K + kw).to(tl.float32)
            acc += tl.maximum(v, 0.0) * wv
    tl.store(y_ptr + plane.to(tl.int64) * HO * WO + offs, acc.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _input_grad_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, C, H, W, HO, WO,
                       K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, PAD: tl.constexpr,
                       BLOCK: tl.constexpr):
    # Gather form of the transposed convolution: every input pixel sums the output pixels whose
    # window covers it, so no two programs write the same address.
    plane = tl.program_id(0)
    c = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    ih = offs // W
    iw = offs % W
    dy_base = dy_ptr + plane.to(tl.int64) * HO * WO
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(K):
        th = ih + PAD - kh * DIL
        oh = th // STRIDE
        row_ok = valid & (th >= 0) & (th % STRIDE == 0) & (oh < HO)
        for kw in tl.static_range(K):
            tw = iw + PAD - kw * DIL
            ow = tw // STRIDE
            m = row_ok & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
            g = tl.load(dy_base + oh * WO + ow, mask=m, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + c * K * K + kh * K + kw).to(tl.float32)
            acc += g * wv
    x = tl.load(x_ptr + plane.to(tl.int64) * H * W + offs, mask=valid, other=0.0)
    acc = tl.where(x > 0, acc, 0.0)
    tl.store(dx_ptr + plane.to(tl.int64) * H * W + offs, acc.to(dx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _weight_grad_partial_kernel(x_ptr, dy_ptr, part_ptr, C, H, W, HO, WO, TOTAL, CHUNK,
                                K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
                                PAD: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    # Program (c, chunk) sums dy * relu(x_shifted) for all K*K taps over one contiguous range of
    # the channel's (sample, output pixel) pairs; a [TAPS, BLOCK] tile keeps every tap's sum.
    c = tl.program_id(0)
    chunk = tl.program_id(1)
    taps = tl.arange(0, TAPS)
    tap_ok = taps < K * K
    kh = taps // K
    kw = taps % K
    acc = tl.zeros([TAPS, BLOCK], dtype=tl.float32)
    start = chunk * CHUNK
    for off in range(0, CHUNK, BLOCK):
        e = start + off + tl.arange(0, BLOCK)
        ok = e < TOTAL
        n = e // (HO * WO)
        pix = e % (HO * WO)
        oh = pix // WO
        ow = pix % WO
        plane = (n * C + c).to(tl.int64)
        g = tl.load(dy_ptr + plane * HO * WO + pix, mask=ok, other=0.0).to(tl.float32)
        ih = oh[None, :] * STRIDE - PAD + kh[:, None] * DIL
        iw = ow[None, :] * STRIDE - PAD + kw[:, None] * DIL
        m = ok[None, :] & tap_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        v = tl.load(x_ptr + plane[None, :] * H * W + ih * W + iw, mask=m, other=0.0).to(tl.float32)
        acc += tl.maximum(v, 0.0) * g[None, :]
    tl.store(part_ptr + chunk * C * K * K + c * K * K + taps, tl.sum(acc, axis=1), mask=tap_ok)


def forward(x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    n, c, h, wd = x.shape
    k = w.shape[-1]
    ho, wo = out_size(h, k, stride, dilation), out_size(wd, k, stride, dilation)
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    block = _block(ho * wo)
    _fwd_kernel[(n * c, triton.cdiv(ho * wo, block))](
        x, w, y, c, h, wd, ho, wo, K=k, STRIDE=stride, DIL=dilation, PAD=dilation * (k - 1) // 2, BLOCK=block)
    return y


def input_grad(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    n, c, h, wd = x.shape
    k = w.shape[-1]
    dx = torch.empty_like(x)
    block = _block(h * wd)
    _input_grad_kernel[(n * c, triton.cdiv(h * wd, block))](
        x, w, dy, dx, c, h, wd, dy.shape[2], dy.shape[3],
        K=k, STRIDE=stride, DIL=dilation, PAD=dilation * (k - 1) // 2, BLOCK=block)
    return dx


def weight_grad(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, stride: int, dilation: int,
                target_programs: int = 512) -> torch.Tensor:
    n, c, h, wd = x.shape
    k = w.shape[-1]
    ho, wo = dy.shape[2], dy.shape[3]
    total = n * ho * wo
    block = 128 if k == 3 else 64
    # Enough chunks per channel to fill the device, each at least one block long.
    chunks = max(1, min(triton.cdiv(total, block), triton.cdiv(target_programs, c)))
    chunk = triton.cdiv(triton.cdiv(total, chunks), block) * block
    chunks = triton.cdiv(total, chunk)
    part = torch.empty((chunks, c * k * k), device=x.device, dtype=torch.float32)
    _weight_grad_partial_kernel[(c, chunks)](
        x, dy, part, c, h, wd, ho, wo, total, chunk, K=k, STRIDE=stride, DIL=dilation,
        PAD=dilation * (k - 1) // 2, TAPS=triton.next_power_of_2(k * k), BLOCK=block)
    return sum_rows(part, w.dtype).view_as(w)
