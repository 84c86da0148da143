"""A cell node: the sum of its incoming edges' BN outputs, optionally with its ReLU, in one pass.

    bn_node_sum(inputs, groups=None, eps=1e-5, with_relu=False)
        = sum_i group_batch_norm(inputs[i], groups, eps)                  with_relu=False
        = (that sum, relu(that sum))                                       with_relu=True

Each edge op of a DARTS-style cell ends with BN (affine=False, batch statistics per sample group)
and the node's consumers usually start with ReLU. Normalising, summing and the ReLU are
elementwise once the statistics are known, so they are one fused dispatch op:

    bn_node_sum_apply(inputs, means, rstds, groups=None, with_relu=False)
        out = sum_i (inputs[i] - means[i][g, c]) * rstds[i][g, c]

with g the sample group of each sample and c its channel; `means[i]`, `rstds[i]` are (G, C).
`groups` are the sizes of consecutive sample groups summing to N (None = one group), as in
`group_batch_norm`. The statistics come from a separate, differentiable step
(`group_batch_stats`), so the fused op's backward returns gradients for the inputs *and* the
statistics and autograd carries the latter back to the inputs. With with_relu=True both the sum
(for pools, skips and the classifier) and its ReLU (for ReLU-conv consumers) come from one pass.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from . import dispatch
from .norm import EPS

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _sizes(x: torch.Tensor, groups: Optional[Sequence[int]]) -> Tuple[int, ...]:
    return tuple(groups) if groups is not None else (x.shape[0],)


def group_batch_stats(x: torch.Tensor, groups: Optional[Sequence[int]] = None,
                      eps: float = EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd), each (G, C): BN batch statistics of x per sample group, differentiable.
    rstd = 1 / sqrt(biased variance + eps), as F.batch_norm in training mode."""
    sizes = _sizes(x, groups)
    n, c = x.shape[:2]
    if len(set(sizes)) == 1:
        # Equal groups: one reduction over (samples of the group, pixels).
        var, mean = torch.var_mean(x.reshape(len(sizes), n // len(sizes), c, -1), dim=(1, 3), correction=0)
    else:
        parts = [torch.var_mean(p.transpose(0, 1).reshape(c, -1), dim=1, correction=0)
                 for p in torch.split(x, list(sizes))]
        var, mean = torch.stack([v for v, _ in parts]), torch.stack([m for _, m in parts])
    return mean, (var + eps).rsqrt()


def _per_sample(stat: torch.Tensor, sizes: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(G, C) -> broadcastable against `like` (N, C, ...): each sample gets its group's row."""
    if len(sizes) > 1:
        stat = stat.repeat_interleave(torch.tensor(sizes, device=stat.device), dim=0, output_size=like.shape[0])
    return stat.reshape(*stat.shape, *([1] * (like.dim() - 2)))


def bn_node_sum_apply_reference(inputs: Sequence[torch.Tensor], means: Sequence[torch.Tensor],
                                rstds: Sequence[torch.Tensor], groups: Optional[Sequence[int]] = None,
                                with_relu: bool = False) -> Result:
    sizes = _sizes(inputs[0], groups)
    out = sum((x - _per_sample(m, sizes, x)) * _per_sample(r, sizes, x) for x, m, r in zip(inputs, means, rstds))
    return (out, torch.relu(out)) if with_relu else out


dispatch.register("bn_node_sum", "reference", bn_node_sum_apply_reference)


def _check(inputs: Sequence[torch.Tensor], groups: Optional[Sequence[int]]) -> None:
    if len(inputs) == 0:
        raise ValueError("bn_node_sum needs at least one input")
    first = inputs[0]
    if first.dim() < 2:
        raise ValueError(f"inputs must be (N, C, ...), got shape {tuple(first.shape)}")
    for i, x in enumerate(inputs[1:], 1):
        if x.shape != first.shape or x.device != first.device:
            raise ValueError(f"input {i} has shape {tuple(x.shape)} on {x.device}, input 0 has "
                             f"{tuple(first.shape)} on {first.device}: all inputs must match")
    if groups is not None and sum(groups) != first.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {first.shape[0]}")


def bn_node_sum_apply(inputs: Sequence[torch.Tensor], means: Sequence[torch.Tensor], rstds: Sequence[torch.Tensor],
                      groups: Optional[Sequence[int]] = None, with_relu: bool = False) -> Result:
    """sum_i (inputs[i] - means[i]) * rstds[i], statistics (G, C) per sample group; see the module docstring."""
    _check(inputs, groups)
    expected = (len(groups) if groups is not None else 1, inputs[0].shape[1])
    if len(means) != len(inputs) or len(rstds) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs need as many means and rstds, got {len(means)} and {len(rstds)}")
    for name, stats in (("means", means), ("rstds", rstds)):
        for i, s in enumerate(stats):
            if tuple(s.shape) != expected or s.device != inputs[0].device:
                raise ValueError(f"{name}[{i}] has shape {tuple(s.shape)} on {s.device}, expected "
                                 f"(groups, channels) = {expected} on {inputs[0].device}")
    return dispatch.call("bn_node_sum", tuple(inputs), tuple(means), tuple(rstds),
                         tuple(groups) if groups is not None else None, with_relu)


def bn_node_sum(inputs: Sequence[torch.Tensor], groups: Optional[Sequence[int]] = None, eps: float = EPS,
                with_relu: bool = False) -> Result:
    """sum_i group_batch_norm(inputs[i], groups, eps), and its ReLU too with with_relu=True (a pair)."""
    _check(inputs, groups)
    sizes, pixels = _sizes(inputs[0], groups), inputs[0].shape[2:].numel()
    if min(sizes) * pixels < 2:
        raise ValueError(f"batch statistics need more than one value per channel in every group: group sizes "
                         f"{list(sizes)} with {pixels} pixel(s) per sample")
    stats = [group_batch_stats(x, groups, eps) for x in inputs]
    return bn_node_sum_apply(inputs, [m for m, _ in stats], [r for _, r in stats], groups, with_relu)
