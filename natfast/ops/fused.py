"""Fused operations: one dispatch op for a sequence of ops that a backend runs in one pass.

`pool_bn`: pool2d followed by the supernet's per-group BN (the `Pool` module with BN). Its
reference is the two dispatched ops in sequence, so a backend without the fused kernel still gets
its own pool2d and group_batch_norm (and use_backend("reference") gets plain PyTorch).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import dispatch
from .norm import EPS, group_batch_norm
from .pool import pool2d


def pool_bn_reference(x: torch.Tensor, kind: str, kernel: int, stride: int, groups: Optional[Sequence[int]],
                      eps: float = EPS) -> torch.Tensor:
    return group_batch_norm(pool2d(x, kind, kernel, stride), groups, eps)


dispatch.register("pool_bn", "reference", pool_bn_reference)


def pool_bn(x: torch.Tensor, kind: str, kernel: int = 3, stride: int = 1, groups: Optional[Sequence[int]] = None,
            eps: float = EPS) -> torch.Tensor:
    """group_batch_norm(pool2d(x, kind, kernel, stride), groups, eps)."""
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    return dispatch.call("pool_bn", x, kind, kernel, stride, tuple(groups) if groups is not None else None, eps)
