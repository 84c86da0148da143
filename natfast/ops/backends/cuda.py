"""CUDA C++ kernels (csrc/cuda) as a dispatch backend: fused ReLU + depthwise convolution and the
GCN policy's batched message passing, each an autograd Function over the natfast::cuda_* operators.

Active when the compiled extension carries CUDA kernels and a GPU is visible.
"""
from __future__ import annotations

import torch

from ... import _ext
from .. import dispatch
from ..dispatch import Reason

_OPS = ("cuda_dwconv_forward", "cuda_dwconv_backward_input", "cuda_dwconv_backward_weight",
        "cuda_gcn_forward", "cuda_gcn_backward")
_DWCONV_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_GCN_DTYPES = (torch.float32, torch.float64)
GCN_SHARED_LIMIT = 48 * 1024  # bytes of shared memory per block the GCN kernels may use (csrc/cuda/gcn.cu)


def _has_cuda_kernel(name: str) -> bool:
    return _ext.has_op(name) and torch._C._dispatch_has_kernel_for_dispatch_key(f"natfast::{name}", "CUDA")


class _ReluDwconv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, dilation):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.dilation = stride, dilation
        return torch.ops.natfast.cuda_dwconv_forward(x, weight, stride, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.natfast.cuda_dwconv_backward_input(grad, x, weight, ctx.stride, ctx.dilation)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.natfast.cuda_dwconv_backward_weight(grad, x, weight.shape[-1], ctx.stride, ctx.dilation)
        return grad_x, grad_w, None, None


def relu_dwconv(x, weight, stride, dilation):
    return _ReluDwconv.apply(x, weight, stride, dilation)


def relu_dwconv_limits(x, weight, stride, dilation) -> Reason:
    """CUDA float16/bfloat16/float32/float64, a square 3x3 or 5x5 depthwise filter."""
    if not (x.is_cuda and weight.is_cuda):
        return "not CUDA tensors"
    if x.dtype not in _DWCONV_DTYPES or weight.dtype != x.dtype:
        return f"input {x.dtype}, weight {weight.dtype} (one of float16, bfloat16, float32, float64)"
    if not (x.dim() == 4 and weight.dim() == 4 and weight.shape[0] == x.shape[1] and weight.shape[1] == 1
            and weight.shape[2] == weight.shape[3]):
        return f"weight {tuple(weight.shape)} is not a square depthwise filter of a 4-D input's channels"
    if weight.shape[2] not in (3, 5):
        return f"a {weight.shape[2]}x{weight.shape[2]} filter (3x3 and 5x5 only)"
    return None if stride >= 1 and dilation >= 1 else f"stride {stride}, dilation {dilation}"


class _GcnPolicyLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj, x, w1, b1, w2, b2, wh, bh):
        logits, h1, h2 = torch.ops.natfast.cuda_gcn_forward(adj, x, w1, b1, w2, b2, wh, bh)
        ctx.save_for_backward(adj, x, w1, w2, wh, h1, h2)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return tuple(torch.ops.natfast.cuda_gcn_backward(grad, *ctx.saved_tensors))


def gcn_policy_logits(adj, x, w1, b1, w2, b2, wh, bh):
    return _GcnPolicyLogits.apply(adj, x, w1, b1, w2, b2, wh, bh)


def gcn_shared_bytes(nodes: int, features: int, hidden1: int, hidden2: int, outputs: int, itemsize: int) -> int:
    """Shared memory of the backward kernel per graph (the larger of the two; see gcn.cu)."""
    return nodes * (2 * nodes + features + 3 * hidden1 + outputs + 3 * hidden2) * itemsize


def gcn_policy_logits_limits(adj, x, w1, b1, w2, b2, wh, bh) -> Reason:
    """CUDA float32/float64 batches of graphs, within 48 KiB of shared memory a graph."""
    tensors = (adj, x, w1, b1, w2, b2, wh, bh)
    if not all(t.is_cuda and t.dtype == x.dtype for t in tensors) or x.dtype not in _GCN_DTYPES:
        return "not all CUDA tensors of one dtype, float32 or float64"
    if adj.dim() != 3 or x.dim() != 3 or adj.shape[:2] != x.shape[:2] or adj.shape[1] != adj.shape[2]:
        return "not a batch of graphs (3-D adjacency and features)"
    if any(t.dim() != 2 for t in (w1, w2, wh)) or any(t.dim() != 1 for t in (b1, b2, bh)):
        return "weights that are not matrices or biases that are not vectors"
    if not (w1.shape[0] == x.shape[2] and w2.shape[0] == w1.shape[1] == b1.shape[0]
            and wh.shape[0] == w2.shape[1] == b2.shape[0] and wh.shape[1] == bh.shape[0]):
        return "shapes that do not chain"
    need = gcn_shared_bytes(adj.shape[1], x.shape[2], w1.shape[1], w2.shape[1], wh.shape[1], x.element_size())
    return None if need <= GCN_SHARED_LIMIT else f"{need} bytes of shared memory a graph (at most {GCN_SHARED_LIMIT})"


def register() -> str:
    try:
        module, why = _ext.load()
        if module is None:
            return f"inactive: {why}"
        missing = [op for op in _OPS if not _has_cuda_kernel(op)]
        if missing:
            return "inactive: the extension was built without the CUDA kernels"
        if not torch.cuda.is_available():
            return "inactive: no CUDA GPU visible"
        dispatch.register("relu_dwconv", "cuda", relu_dwconv, relu_dwconv_limits)
        dispatch.register("gcn_policy_logits", "cuda", gcn_policy_logits, gcn_policy_logits_limits)
        return "active: relu_dwconv, gcn_policy_logits"
    except Exception as exc:  # a broken build must never break `import natfast`
        return f"inactive: {type(exc).__name__}: {exc}"
