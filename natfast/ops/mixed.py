"""Routed mixed operation of an edge's parameter-free candidates, for a whole batch at once.

    routed_mixed_op(x, weights, kernel=3, stride=1, groups=None, skip=None, eps=1e-5)

Candidates, in the column order of `weights` (N, 4):
    0  max_pool_KxK + BN        1  avg_pool_KxK + BN        2  skip_connect        3  null
(pools: padding K // 2, the average excludes the padding; BN: affine=False, batch statistics.)

    out[n] = w[n,0] * BN0(maxpool(x))[n] + w[n,1] * BN1(avgpool(x))[n] + w[n,2] * skip[n]

* Routing: sample n is *routed* to candidate j when w[n, j] != 0. One-hot rows give the sampled
  path (each sample gets exactly its candidate's output); general rows mix candidates (soft).
* BN statistics of candidate j are computed, per sample group g (`groups`: sizes of consecutive
  sample groups summing to N, None = one group), over the samples of g routed to j only: a sample
  then gets what running candidate j alone on its group's routed samples would give.
* `skip` is x itself at stride 1. At stride 2, skip_connect is FactorizedReduce, which has
  parameters: the caller computes it and passes its output as `skip` (or passes none and keeps
  w[:, 2] zero).
* Gradients flow to x, skip and weights. The weight gradient of a candidate a sample is not routed
  to is zero (its BN statistics do not include that sample); null's weight gradient is zero.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import dispatch
from .norm import EPS
from .pool import pool2d_reference

CANDIDATES = ("max_pool", "avg_pool", "skip_connect", "null")


def routed_mixed_op_reference(x: torch.Tensor, weights: torch.Tensor, kernel: int = 3, stride: int = 1,
                              groups: Optional[Sequence[int]] = None, skip: Optional[torch.Tensor] = None,
                              eps: float = EPS) -> torch.Tensor:
    w = weights.to(x.dtype)
    sizes = list(groups) if groups is not None else [x.shape[0]]
    group_of = torch.repeat_interleave(torch.arange(len(sizes), device=x.device),
                                       torch.tensor(sizes, device=x.device))
    out = 0.0 if skip is None else skip * w[:, 2, None, None, None]
    for j, kind in enumerate(("max", "avg")):
        pooled = pool2d_reference(x, kind, kernel, stride)
        normed = torch.zeros_like(pooled)
        for g in range(len(sizes)):
            rows = torch.nonzero((w[:, j] != 0) & (group_of == g)).flatten()
            if rows.numel():
                normed = normed.index_copy(0, rows, F.batch_norm(pooled[rows], None, None, training=True, eps=eps))
        out = out + w[:, j, None, None, None] * normed
    return out


dispatch.register("routed_mixed_op", "reference", routed_mixed_op_reference)


def routed_mixed_op(x: torch.Tensor, weights: torch.Tensor, kernel: int = 3, stride: int = 1,
                    groups: Optional[Sequence[int]] = None, skip: Optional[torch.Tensor] = None,
                    eps: float = EPS) -> torch.Tensor:
    """Per-sample one-hot or soft mix of [max_pool+BN, avg_pool+BN, skip, null]; see the module docstring."""
    if weights.shape != (x.shape[0], len(CANDIDATES)):
        raise ValueError(f"weights must be (N, {len(CANDIDATES)}) = ({x.shape[0]}, {len(CANDIDATES)}), "
                         f"got {tuple(weights.shape)}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    if skip is None and stride == 1:
        skip = x
    pooled = tuple((size + 2 * (kernel // 2) - kernel) // stride + 1 for size in x.shape[2:])
    if skip is not None and tuple(skip.shape) != (*x.shape[:2], *pooled):
        raise ValueError(f"skip has shape {tuple(skip.shape)}, the pooled output {(*x.shape[:2], *pooled)}")
    return dispatch.call("routed_mixed_op", x, weights, kernel, stride,
                         tuple(groups) if groups is not None else None, skip, eps)
