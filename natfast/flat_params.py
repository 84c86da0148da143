"""Every parameter of a supernet a view of one flat buffer, its gradient a view of another, and an
SGD step that updates exactly the parameters a sampled architecture used.

Why: a step captured once (a CUDA graph) and replayed for every sampled architecture can neither
allocate nor skip parameters in host code. With flat buffers the gradients are zeroed by one fill,
the clip's norm is one reduction, and the optimiser is one launch that reads which parameters the
step used from a small table (natfast.ops.optim.masked_sgd); eager PyTorch semantics hold: an unused
parameter keeps its value, gradient and momentum buffer bit for bit.

    flat = FlatParameters(list(supernet.parameters()))
    sgd = MaskedSGD(flat, lr=0.025, momentum=0.9, weight_decay=3e-4, max_norm=5.0)
    flat.zero_grad(); loss.backward()
    sgd.step(flat.used(natfast.executor.parameters_read(supernet, genotype)))

Gradients stay views as long as nothing sets them to None: use `flat.zero_grad()`, not an
optimiser's `zero_grad(set_to_none=True)` (autograd would then hand each parameter a new tensor).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import torch

from .ops.optim import masked_sgd


class FlatParameters:
    """The parameters' values in `data`, their gradients in `grad` (flat, float32, one device);
    parameter i holds elements offsets[i] : offsets[i] + sizes[i] of both."""

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        params = list(params)
        if not params:
            raise ValueError("FlatParameters needs at least one parameter")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter is listed twice")
        device = params[0].device
        odd = [i for i, p in enumerate(params) if p.dtype != torch.float32 or p.device != device]
        if odd:
            raise ValueError(f"parameters must all be float32 on {device}; parameter {odd[0]} is "
                             f"{params[odd[0]].dtype} on {params[odd[0]].device}")
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(params))]
        total = sum(self.sizes)
        self.data = torch.empty(total, device=device)
        self.grad = torch.zeros(total, device=device)
        for p, start, size in zip(params, self.offsets, self.sizes):
            self.data[start:start + size].copy_(p.detach().reshape(-1))
            p.data = self.data[start:start + size].view_as(p)
            p.grad = self.grad[start:start + size].view_as(p)
        self.segment_of = torch.repeat_interleave(torch.arange(len(params), dtype=torch.int32, device=device),
                                                  torch.tensor(self.sizes, device=device))
        self._index: Dict[int, int] = {id(p): i for i, p in enumerate(params)}

    def zero_grad(self) -> None:
        self.grad.zero_()

    def check_views(self) -> None:
        """Raise if a parameter or its gradient stopped being a view of the flat buffers (something
        assigned `.data` or set `.grad` to None)."""
        for i, p in enumerate(self.params):
            start = self.offsets[i]
            for what, t, flat in (("value", p.data, self.data), ("gradient", p.grad, self.grad)):
                if t is None or t.data_ptr() != flat[start:].data_ptr():
                    raise RuntimeError(f"parameter {i}'s {what} is no longer a view of the flat buffer")

    def used(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        """The uint8 flag table (one per parameter) of the parameters in `params`."""
        flags = torch.zeros(len(self.params), dtype=torch.uint8)
        for p in params:
            try:
                flags[self._index[id(p)]] = 1
            except KeyError:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not among the flat ones") from None
        return flags.to(self.data.device)


class MaskedSGD:
    """torch.optim.SGD (momentum, weight decay, no dampening or Nesterov) after clip_grad_norm_,
    over the parameters a step used, on FlatParameters."""

    def __init__(self, flat: FlatParameters, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 max_norm: float = 0.0):
        self.flat, self.lr, self.momentum, self.weight_decay, self.max_norm = flat, lr, momentum, weight_decay, max_norm
        self.buf = torch.zeros_like(flat.data)
        self.started = torch.zeros(len(flat.params), dtype=torch.uint8, device=flat.data.device)

    def step(self, used: torch.Tensor) -> None:
        masked_sgd(self.flat.data, self.flat.grad, self.buf, self.flat.segment_of, used, self.started, self.lr,
                   self.momentum, self.weight_decay, self.max_norm)

    def store_torch_state(self, params: Sequence[torch.Tensor], optimizer: torch.optim.SGD) -> None:
        """Write the momentum buffers into `optimizer` (a torch.optim.SGD over `params`, the same
        parameters) as its own state, so a checkpoint of it resumes under either engine."""
        started = self.started.tolist()
        for p, buf in zip(self._ordered(params), self.momentum_buffers()):
            if started[self.flat._index[id(p)]]:
                optimizer.state[p]["momentum_buffer"] = buf.clone()
            else:
                optimizer.state.pop(p, None)

    def load_torch_state(self, params: Sequence[torch.Tensor], optimizer: torch.optim.SGD) -> None:
        """Take the momentum buffers from `optimizer`'s state (after its load_state_dict)."""
        buffers = self.momentum_buffers()
        for p in self._ordered(params):
            i = self.flat._index[id(p)]
            state = optimizer.state.get(p, {}).get("momentum_buffer")
            self.started[i] = int(state is not None)
            buffers[i].copy_(state if state is not None else torch.zeros_like(buffers[i]))

    def _ordered(self, params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if [id(p) for p in params] != [id(p) for p in self.flat.params]:
            raise ValueError("the optimiser's parameters are not the flat parameters, in order")
        return list(params)

    def momentum_buffers(self) -> List[torch.Tensor]:
        """Each parameter's momentum buffer (a view), zeros where it has none yet."""
        return [self.buf[s:s + n].view_as(p) for p, s, n in zip(self.flat.params, self.flat.offsets, self.flat.sizes)]
