"""Masked SGD over flat parameters: one launch updates exactly the parameters a step used.

The supernet's parameters live in one flat buffer (natfast/flat_params.py); a step of a sampled
architecture uses some of them. Eager PyTorch leaves an unused parameter's gradient None, so SGD
skips it and its value and momentum buffer stay as they were. Here the step's use is data (one flag
per parameter, written by the host), so the same launch serves every architecture: each element
loads its parameter's flag and writes nothing when it is unused. The gradient-norm clip's factor
is a device scalar computed before the launch, so nothing waits on the host.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _masked_sgd_kernel(param_ptr, grad_ptr, buf_ptr, segment_ptr, used_ptr, started_ptr, scale_ptr, N,
                       lr, momentum, weight_decay, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < N
    segment = tl.load(segment_ptr + offs, mask=inside, other=0)
    used = tl.load(used_ptr + segment, mask=inside, other=0) != 0
    ok = inside & used
    started = tl.load(started_ptr + segment, mask=ok, other=0) != 0
    scale = tl.load(scale_ptr)
    p = tl.load(param_ptr + offs, mask=ok, other=0.0)
    g = tl.load(grad_ptr + offs, mask=ok, other=0.0) * scale
    b = tl.load(buf_ptr + offs, mask=ok, other=0.0)
    # torch.optim.SGD (dampening 0, no Nesterov): d = g + wd * p; buf = d on a parameter's first
    # step, else momentum * buf + d; p -= lr * buf.
    d = g + weight_decay * p
    b = tl.where(started, b * momentum + d, d)
    tl.store(grad_ptr + offs, g, mask=ok)       # clipped in place, as clip_grad_norm_ leaves it
    tl.store(buf_ptr + offs, b, mask=ok)
    tl.store(param_ptr + offs, p - lr * b, mask=ok)


def masked_sgd(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, segment_of: torch.Tensor,
               used: torch.Tensor, started: torch.Tensor, scale: torch.Tensor, lr: float, momentum: float,
               weight_decay: float) -> None:
    """In place on param, grad and buf (flat float32, contiguous); segment_of (int32, one per element)
    names each element's parameter; used and started (uint8, one per parameter); scale: the clip
    factor, a one-element float32 tensor."""
    n = param.numel()
    block = 1024
    _masked_sgd_kernel[(triton.cdiv(n, block),)](param, grad, buf, segment_of, used, started, scale, n,
                                                  lr, momentum, weight_decay, BLOCK=block)
