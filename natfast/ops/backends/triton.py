"""Triton backend: autograd functions around the kernels of `natfast.kernels` (the top-level
`kernels/` folder of the source tree).

Registered for CUDA tensors when a GPU is present. With env NATFAST_TRITON_INTERPRET=1 the same
implementations are also registered for CPU tensors and run in Triton's interpreter
(TRITON_INTERPRET=1 is set for you if Triton is not imported yet): that is how CI tests them.
Triton is imported only in those two cases, so `import natfast` stays cheap without a GPU.
CPU tensors are not in dispatch's default CPU preference list: reach this backend on CPU with
`dispatch.use_backend("triton")` or NATFAST_BACKEND=triton.

The per-op kernels relu_dwconv, pool2d and group_batch_norm were removed: on an H100 they lost to
PyTorch eager (bench/RESULTS.md, "GPU (H100)"), and on the GPU search step the graph engine
(natfast/graph/, kernels/graph_*.py) replaces them. Forcing this backend for one of them
(NATFAST_BACKEND=relu_dwconv=triton) raises dispatch.BackendDeclined: it has no such op.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from .. import dispatch
from ..dispatch import Reason

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_GCN_WIDTH = 128  # features, hidden and output sizes a program keeps in registers
MAX_TARGETS = 64     # candidate targets per edge in masked_sample

_interpret = False
_kernels: Optional[ModuleType] = None


def load_kernels() -> ModuleType:
    """`natfast.kernels`, installed (setup.py maps kernels/ there) or, in a source tree, the
    top-level kernels/ folder loaded under that same name."""
    global _kernels
    if _kernels is None:
        try:
            from natfast import kernels
        except ImportError:
            root = Path(__file__).resolve().parents[3] / "kernels"
            spec = importlib.util.spec_from_file_location(
                "natfast.kernels", root / "__init__.py", submodule_search_locations=[str(root)])
            kernels = importlib.util.module_from_spec(spec)
            sys.modules["natfast.kernels"] = kernels
            spec.loader.exec_module(kernels)
        _kernels = kernels
    return _kernels


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (NATFAST_TRITON_INTERPRET=1)."""
    return _interpret


def _served(*tensors: torch.Tensor) -> Reason:
    """All on one device this backend runs on, in a float type the kernels accumulate in fp32."""
    first = tensors[0]
    if not (first.is_cuda or (_interpret and first.device.type == "cpu")):
        return f"a {first.device.type} tensor (Triton runs CUDA tensors, and CPU ones in its interpreter)"
    if any(t.device != first.device for t in tensors):
        return "tensors on different devices"
    odd = sorted({str(t.dtype) for t in tensors if t.dtype not in FLOAT_TYPES})
    return f"{', '.join(odd)} (float32, float16 and bfloat16 only)" if odd else None


def _empty(x: torch.Tensor) -> Reason:
    return "an empty input" if x.numel() == 0 else None


# ----------------------------------------------------------------------------- gcn_policy_logits
class _GCNPolicyLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj, x, w1, b1, w2, b2, wh, bh):
        tensors = [t.contiguous() for t in (adj, x, w1, b1, w2, b2, wh, bh)]
        ctx.save_for_backward(*tensors[:7])
        return load_kernels().gcn.forward(*tensors)

    @staticmethod
    def backward(ctx, d_logits):
        adj, x, w1, b1, w2, b2, wh = ctx.saved_tensors
        grads = load_kernels().gcn.backward(adj, x, w1, b1, w2, b2, wh, d_logits.contiguous())
        params = (w1, b1, w2, b2, wh, wh)  # bh has wh's dtype (checked in `supports`)
        return (None, grads[0]) + tuple(g.to(p.dtype) for g, p in zip(grads[1:], params))


def gcn_policy_logits(adj, x, w1, b1, w2, b2, wh, bh):
    if adj.dim() == 2:  # one graph
        return _GCNPolicyLogits.apply(adj[None], x[None], w1, b1, w2, b2, wh, bh)[0]
    return _GCNPolicyLogits.apply(adj, x, w1, b1, w2, b2, wh, bh)


def _gcn_limits(adj, x, w1, b1, w2, b2, wh, bh) -> Reason:
    """CUDA (or interpreted CPU) floats, a fixed adjacency, 1 to 32 nodes, widths up to 128."""
    if adj.requires_grad:
        return "a learned adjacency (its gradient: the reference has it)"
    if adj.dim() != x.dim() or adj.dim() not in (2, 3):
        return f"adjacency {tuple(adj.shape)} and features {tuple(x.shape)} are not one graph or a batch of graphs"
    n = adj.shape[-1]
    widths = (x.shape[-1], w1.shape[1], w2.shape[1], wh.shape[1])
    if not (adj.shape[-2] == n == x.shape[-2] and adj.shape[:-2] == x.shape[:-2] and w1.shape[0] == widths[0]
            and w2.shape[0] == widths[1] and wh.shape[0] == widths[2] and b1.shape == (widths[1],)
            and b2.shape == (widths[2],) and bh.shape == (widths[3],)):
        return "shapes that do not chain (adjacency, features, weights, biases)"
    if not 0 < n <= 32:
        return f"{n} nodes (1 to 32)"
    if max(widths) > MAX_GCN_WIDTH:
        return f"widths {widths} (at most {MAX_GCN_WIDTH})"
    if bh.dtype != wh.dtype:
        return "head bias and weight of different dtypes"
    return _empty(x) or _served(adj, x, w1, b1, w2, b2, wh, bh)


# ----------------------------------------------------------------------------- masked_sample
class _MaskedSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, mask, uniform):
        actions, logp, ent = load_kernels().sample.forward(logits, mask, uniform)
        ctx.save_for_backward(logits, mask, actions)
        ctx.mark_non_differentiable(actions)
        return actions, logp, ent

    @staticmethod
    def backward(ctx, _, g_logp, g_ent):
        logits, mask, actions = ctx.saved_tensors
        g_logp = torch.zeros_like(actions, dtype=torch.float32) if g_logp is None else g_logp.float().contiguous()
        g_ent = torch.zeros_like(g_logp) if g_ent is None else g_ent.float().contiguous()
        return load_kernels().sample.backward(logits, mask, actions, g_logp, g_ent), None, None


def masked_sample(logits, mask, uniform=None):
    lead, p = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, p).contiguous()
    mask = mask.expand_as(logits).reshape(-1, p).contiguous()
    u = None if uniform is None else uniform.reshape(-1).float().contiguous()
    actions, logp, ent = _MaskedSample.apply(flat, mask, u)
    return actions.view(lead), logp.view(lead), ent.view(lead)


def _masked_sample_limits(logits, mask, uniform=None) -> Reason:
    """CUDA (or interpreted CPU) floats, 1 to 64 targets per row."""
    if logits.dim() < 1 or not 0 < logits.shape[-1] <= MAX_TARGETS:
        return f"logits {tuple(logits.shape)} (1 to {MAX_TARGETS} targets)"
    if mask.device != logits.device or (uniform is not None and uniform.device != logits.device):
        return "tensors on different devices"
    return _empty(logits) or _served(logits)


# ----------------------------------------------------------------------------- masked_sgd
def masked_sgd(param, grad, buf, segment_of, used, started, scale, lr, momentum, weight_decay):
    load_kernels().optim.masked_sgd(param, grad, buf, segment_of, used, started, scale, lr, momentum, weight_decay)


def _masked_sgd_limits(param, grad, buf, segment_of, used, started, scale, *hyper) -> Reason:
    """CUDA (or interpreted CPU) flat float32 buffers (natfast.ops.masked_sgd checks their shapes)."""
    if param.dtype != torch.float32:
        return f"{param.dtype} parameters (float32 only)"
    if any(t.device != param.device for t in (grad, buf, segment_of, used, started, scale)):
        return "tensors on different devices"
    return _empty(param) or _served(param)


OPS = {
    "gcn_policy_logits": (gcn_policy_logits, _gcn_limits),
    "masked_sample": (masked_sample, _masked_sample_limits),
    "masked_sgd": (masked_sgd, _masked_sgd_limits),
}


def register() -> str:
    global _interpret
    _interpret = os.environ.get("NATFAST_TRITON_INTERPRET", "") == "1"
    if not _interpret and not torch.cuda.is_available():
        return "inactive: no GPU (NATFAST_TRITON_INTERPRET=1 runs the kernels in Triton's CPU interpreter)"
    if _interpret and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        load_kernels()
    except Exception as exc:  # a missing or incompatible Triton must never break `import natfast`
        return f"inactive: the Triton kernels could not be loaded ({type(exc).__name__}: {exc})"
    from .. import policy_sample  # noqa: F401  (it registers the reference of its op)

    for op, (fn, limits) in OPS.items():
        dispatch.register(op, "triton", fn, limits)
    mode = "Triton interpreter, CPU and CUDA tensors" if _interpret else "CUDA tensors"
    return f"active ({mode}): {', '.join(OPS)}"
