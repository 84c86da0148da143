"""The supernet's optimiser step as one op: SGD with momentum, weight decay and the gradient-norm
clip over flat parameters, updating exactly the parameters a step used (natfast/flat_params.py
keeps the flat buffers).

`masked_sgd(param, grad, buf, segment_of, used, started, lr, momentum, weight_decay, max_norm)`
does in place what `clip_grad_norm_(used params, max_norm)` then `torch.optim.SGD.step()` do when
the unused parameters' gradients are None: used parameters get the clip (over the used gradients:
the unused ones are zero, so the norm of the whole flat gradient is theirs), weight decay and
momentum (a parameter's first update starts its buffer, as SGD's), and unused ones keep their value,
gradient and momentum buffer bit for bit. Nothing in it reads a value on the host, so a captured
step replays it for any architecture.

param, grad, buf: flat float32; segment_of: int32, the parameter of each element; used, started:
uint8, one per parameter (started: the parameter has a momentum buffer; updated here).
"""
from __future__ import annotations

import torch

from . import dispatch


def clip_scale(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_'s factor as a one-element device tensor: min(1, max_norm / (norm + 1e-6))."""
    if max_norm <= 0:
        return torch.ones(1, device=grad.device, dtype=torch.float32)
    norm = torch.linalg.vector_norm(grad.float()).reshape(1)
    return (max_norm / (norm + 1e-6)).clamp_(max=1.0)


def masked_sgd_reference(param, grad, buf, segment_of, used, started, scale, lr, momentum, weight_decay) -> None:
    mask = used.bool()[segment_of.long()]
    first = ~started.bool()[segment_of.long()]
    g = grad * scale
    d = g + weight_decay * param
    new_buf = torch.where(first, d, buf * momentum + d)
    grad.copy_(torch.where(mask, g, grad))
    buf.copy_(torch.where(mask, new_buf, buf))
    param.copy_(torch.where(mask, param - lr * new_buf, param))


dispatch.register("masked_sgd", "reference", masked_sgd_reference)


def masked_sgd(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, segment_of: torch.Tensor,
               used: torch.Tensor, started: torch.Tensor, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, max_norm: float = 0.0) -> None:
    """One SGD step, in place, on the parameters flagged in `used`; see the module docstring."""
    flat = (param, grad, buf)
    if any(t.dim() != 1 or t.dtype != torch.float32 or not t.is_contiguous() or t.shape != param.shape for t in flat):
        raise ValueError("param, grad and buf must be flat contiguous float32 tensors of one size, got "
                         + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in flat))
    if segment_of.shape != param.shape or segment_of.dtype != torch.int32:
        raise ValueError(f"segment_of must be int32 with one entry per element, got {tuple(segment_of.shape)} "
                         f"{segment_of.dtype}")
    if used.shape != started.shape or used.dtype != torch.uint8 or started.dtype != torch.uint8:
        raise ValueError("used and started must be uint8 tensors with one entry per parameter")
    scale = clip_scale(grad, max_norm)
    dispatch.call("masked_sgd", param, grad, buf, segment_of, used, started, scale, lr, momentum, weight_decay)
    started.bitwise_or_(used)
