"""CUDA C++ kernels (csrc/cuda) as a dispatch backend: the GCN policy's batched message passing, an
autograd Function over the natfast::cuda_gcn_* operators.

Active when the compiled extension carries CUDA kernels and a GPU is visible. The CUDA C++
relu_dwconv (csrc/cuda/dwconv.cu) was removed: on an H100 it lost to PyTorch eager at every batch
1-256 (bench/RESULTS.md, "dispatch table"), the dispatch table kept it off, and only forcing reached
it; forcing it now (NATFAST_BACKEND=relu_dwconv=cuda) raises dispatch.BackendDeclined.
"""
from __future__ import annotations

import torch

from ... import _ext
from .. import dispatch
from ..dispatch import Reason

_OPS = ("cuda_gcn_forward", "cuda_gcn_backward")
_GCN_DTYPES = (torch.float32, torch.float64)
GCN_SHARED_LIMIT = 48 * 1024  # bytes of shared memory per block the GCN kernels may use (csrc/cuda/gcn.cu)


def _has_cuda_kernel(name: str) -> bool:
    return _ext.has_op(name) and torch._C._dispatch_has_kernel_for_dispatch_key(f"natfast::{name}", "CUDA")


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
        dispatch.register("gcn_policy_logits", "cuda", gcn_policy_logits, gcn_policy_logits_limits)
        return "active: gcn_policy_logits"
    except Exception as exc:  # a broken build must never break `import natfast`
        return f"inactive: {type(exc).__name__}: {exc}"
