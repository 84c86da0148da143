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
def _weight_grad_partial_kernel(x_ptr, dy_ptr, part_ptr, N, C, H, W, HO, WO, SAMPLES,
                                K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr,
                                PAD: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    # Program (c, chunk, pixel block) sums dy * relu(x_shifted) for all K*K taps over one block of
    # output pixels of channel c, for the SAMPLES samples of its chunk; a [TAPS, BLOCK] tile keeps
    # every tap's sum. The tap offsets and masks depend on the pixel only, so they are computed once,
    # outside the sample loop. (The previous form, chunks of flattened (sample, pixel) pairs,
    # divided every element's index; on the first H100 run its backward was 3.5x slower than eager.)
    c = tl.program_id(0)
    chunk = tl.program_id(1)
    block = tl.program_id(2)
    taps = tl.arange(0, TAPS)
    tap_ok = taps < K * K
    kh = taps // K
    kw = taps % K
    pix = block * BLOCK + tl.arange(0, BLOCK)
    pix_ok = pix < HO * WO
    oh = pix // WO
    ow = pix % WO
    ih = oh[None, :] * STRIDE - PAD + kh[:, None] * DIL
    iw = ow[None, :] * STRIDE - PAD + kw[:, None] * DIL
    m = pix_ok[None, :] & tap_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_offset = ih * W + iw
    acc = tl.zeros([TAPS, BLOCK], dtype=tl.float32)
    first = chunk * SAMPLES
    for n in range(first, tl.minimum(first + SAMPLES, N)):
        plane = (n * C + c).to(tl.int64)
        g = tl.load(dy_ptr + plane * HO * WO + pix, mask=pix_ok, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + plane * H * W + x_offset, mask=m, other=0.0).to(tl.float32)
        acc += tl.maximum(v, 0.0) * g[None, :]
    row = chunk * tl.num_programs(2) + block
    tl.store(part_ptr + (row * C + c) * K * K + taps, tl.sum(acc, axis=1), mask=tap_ok)


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
                target_programs: int = 1024) -> torch.Tensor:
    n, c, h, wd = x.shape
    k = w.shape[-1]
    ho, wo = dy.shape[2], dy.shape[3]
    # A [taps, pixels] tile of 2048 accumulators; planes smaller than that take one block each.
    block = min(triton.next_power_of_2(ho * wo), 128 if k == 3 else 64)
    blocks = triton.cdiv(ho * wo, block)
    # Split the samples into enough chunks to fill the device. The partial sums depend on the
    # shapes alone, and rows are added in order, so the gradient is the same on every run.
    chunks = max(1, min(n, triton.cdiv(target_programs, c * blocks)))
    samples = triton.cdiv(n, chunks)
    chunks = triton.cdiv(n, samples)
    part = torch.empty((chunks * blocks, c * k * k), device=x.device, dtype=torch.float32)
    _weight_grad_partial_kernel[(c, chunks, blocks)](
        x, dy, part, n, c, h, wd, ho, wo, samples, K=k, STRIDE=stride, DIL=dilation,
        PAD=dilation * (k - 1) // 2, TAPS=triton.next_power_of_2(k * k), BLOCK=block)
    return sum_rows(part, w.dtype).view_as(w)
