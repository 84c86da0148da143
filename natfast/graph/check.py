"""The graph engine's step against eager PyTorch: the equivalence the tests and `natfast bench
capture` report.

`step_against_eager` starts both from the same parameters and momentum buffers (the eager ones are
copied into the engine), runs one update_w of `genotype` in each (eager: the supernet's plain
reference ops, cross-entropy, clip_grad_norm_, torch.optim.SGD), and returns the largest relative
error of logits, loss, gradients, parameters and momentum buffers after the step, and whether
every parameter eager gave no gradient kept its value and momentum buffer bit for bit.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn.functional as F

from ..genotype import Genotype
from ..ops import dispatch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


class EagerTwin:
    """A copy of the engine's supernet trained the eager way (same hyperparameters)."""

    def __init__(self, engine):
        self.engine = engine
        self.net = copy.deepcopy(engine.supernet)
        sgd = engine.sgd
        self.params = list(self.net.parameters())
        self.opt = torch.optim.SGD(self.params, sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)

    def sync_engine(self) -> None:
        """Copy this twin's parameters and momentum buffers into the engine."""
        eng = self.engine
        with torch.no_grad():
            for p, q in zip(eng.flat.params, self.params):
                p.copy_(q)
        buffers = eng.sgd.momentum_buffers()
        for i, q in enumerate(self.params):
            state = self.opt.state.get(q, {}).get("momentum_buffer")
            eng.sgd.started[i] = int(state is not None)
            buffers[i].copy_(state if state is not None else torch.zeros_like(buffers[i]))

    def step(self, x: torch.Tensor, y: torch.Tensor, genotype: Genotype):
        with dispatch.use_backend("reference"):
            logits = self.net(x, genotype)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.engine.sgd.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.engine.sgd.max_norm)
        self.opt.step()
        return logits.detach(), loss.detach()


def step_against_eager(twin: EagerTwin, x: torch.Tensor, y: torch.Tensor, genotype: Genotype) -> Dict[str, float]:
    eng = twin.engine
    twin.sync_engine()
    with torch.no_grad():
        logits = eng.logits(x, genotype)
    before = eng.flat.data.clone(), eng.sgd.buf.clone()
    loss, _ = eng.step(x, y, genotype)
    e_logits, e_loss = twin.step(x, y, genotype)
    errors = {"logits": _rel(logits, e_logits), "loss": _rel(loss, e_loss),
              "grad": 0.0, "param": 0.0, "momentum": 0.0}
    unused_kept = True
    buffers = eng.sgd.momentum_buffers()
    for i, (p, q) in enumerate(zip(eng.flat.params, twin.params)):
        start, size = eng.flat.offsets[i], eng.flat.sizes[i]
        if q.grad is None:
            unused_kept &= torch.equal(eng.flat.data[start:start + size], before[0][start:start + size]) and \
                torch.equal(eng.sgd.buf[start:start + size], before[1][start:start + size])
            continue
        errors["grad"] = max(errors["grad"], _rel(p.grad, q.grad))
        errors["param"] = max(errors["param"], _rel(p.detach(), q.detach()))
        errors["momentum"] = max(errors["momentum"], _rel(buffers[i], twin.opt.state[q]["momentum_buffer"]))
    errors["unused_bitwise_unchanged"] = bool(unused_kept)
    return errors
