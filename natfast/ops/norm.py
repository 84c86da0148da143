"""Batch normalisation without affine parameters, with statistics per group of samples.

The supernet's BN is affine=False and always uses batch statistics. When one batch carries
several architectures (one per group of samples), each group must be normalised with its own
statistics so that its result equals running that architecture alone on its samples.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import dispatch

EPS = 1e-5


def group_batch_norm_reference(x: torch.Tensor, groups: Optional[Sequence[int]] = None, eps: float = EPS) -> torch.Tensor:
    if groups is None or len(groups) == 1:
        return F.batch_norm(x, None, None, training=True, eps=eps)
    if len(set(groups)) == 1:
        # Equal groups: fold the group into the channel dimension, one call.
        g, n = len(groups), groups[0]
        c = x.shape[1]
        y = x.reshape(g, n, c, *x.shape[2:]).transpose(0, 1).reshape(n, g * c, *x.shape[2:])
        y = F.batch_norm(y, None, None, training=True, eps=eps)
        return y.reshape(n, g, c, *x.shape[2:]).transpose(0, 1).reshape(x.shape)
    return torch.cat([F.batch_norm(part, None, None, training=True, eps=eps)
                      for part in torch.split(x, list(groups))])


dispatch.register("group_batch_norm", "reference", group_batch_norm_reference)


def group_batch_norm(x: torch.Tensor, groups: Optional[Sequence[int]] = None, eps: float = EPS) -> torch.Tensor:
    """BN(affine=False) with batch statistics computed separately for each group of samples."""
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    return dispatch.call("group_batch_norm", x, tuple(groups) if groups is not None else None, eps)
