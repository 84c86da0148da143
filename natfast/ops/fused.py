"""Fused operations: one dispatch op for a sequence of ops that a backend runs in one pass.

`pool_bn`: pool2d followed by the supernet's per-group BN (the `Pool` module with BN).
`conv1x1_bn`: a stride-1 1x1 convolution (of relu(x) with relu_input) followed by that BN: the
end of sep_conv/dil_conv and the cell preprocessing.
`cat_conv1x1_bn`: conv1x1_bn of tensors concatenated along channels (a cell output's nodes), which
a fused kernel reads in place instead of concatenating them.
`cat_conv1x1_bn_each`: cat_conv1x1_bn for several weights over the same parts (the two cells that
preprocess one cell output); a fused kernel reads the input once for all.
`factorized_reduce_bn`: the supernet's FactorizedReduce (ReLU, two stride-2 1x1 convolutions, one on
the pixels shifted by one, concatenated, BN) of a cell output's nodes; a backend may serve it for
scoring only.
`relu_conv_bn`: the supernet's conv_kxk candidates (relu_conv2d, then that BN); a backend may serve
it for scoring only.
`dil_conv_bn` / `sep_conv_bn`: the supernet's whole dil_conv and sep_conv (relu_dwconv, then
conv1x1_bn; twice for sep_conv). A backend may serve them for scoring only (no autograd recording),
where nothing needs keeping for a backward and one pass per sample does the whole op.
Each reference is the dispatched ops in sequence, so a backend without the fused kernel still gets
its own unfused kernels (and use_backend("reference") gets plain PyTorch).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import dispatch
from .conv import relu_conv2d
from .depthwise import relu_dwconv
from .norm import EPS, group_batch_norm
from .pointwise import conv1x1
from .pool import pool2d


def pool_bn_reference(x: torch.Tensor, kind: str, kernel: int, stride: int, groups: Optional[Sequence[int]],
                      eps: float = EPS) -> torch.Tensor:
    return group_batch_norm(pool2d(x, kind, kernel, stride), groups, eps)


dispatch.register("pool_bn", "reference", pool_bn_reference, composite=True)


def pool_bn(x: torch.Tensor, kind: str, kernel: int = 3, stride: int = 1, groups: Optional[Sequence[int]] = None,
            eps: float = EPS) -> torch.Tensor:
    """group_batch_norm(pool2d(x, kind, kernel, stride), groups, eps)."""
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    return dispatch.call("pool_bn", x, kind, kernel, stride, tuple(groups) if groups is not None else None, eps)


def conv1x1_bn_reference(x: torch.Tensor, weight: torch.Tensor, groups: Optional[Sequence[int]], eps: float = EPS,
                         relu_input: bool = False) -> torch.Tensor:
    return group_batch_norm(conv1x1(F.relu(x) if relu_input else x, weight), groups, eps)


dispatch.register("conv1x1_bn", "reference", conv1x1_bn_reference, composite=True)


def conv1x1_bn(x: torch.Tensor, weight: torch.Tensor, groups: Optional[Sequence[int]] = None, eps: float = EPS,
               relu_input: bool = False) -> torch.Tensor:
    """group_batch_norm(conv1x1(relu(x) if relu_input else x, weight), groups, eps), stride 1."""
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 1, 1):
        raise ValueError(f"conv1x1_bn needs an (N, C, H, W) input and a (C_out, C, 1, 1) weight, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    return dispatch.call("conv1x1_bn", x, weight, tuple(groups) if groups is not None else None, eps, relu_input)


def _check_cat_inputs(op: str, parts: List[torch.Tensor], weights: List[torch.Tensor],
                      groups: Optional[Sequence[int]]) -> None:
    """Clear errors for parts that do not concatenate, weights that do not fit them, bad groups."""
    if not parts or any(p.dim() != 4 for p in parts):
        raise ValueError(f"{op} needs one or more (N, C, H, W) parts, got shapes {[tuple(p.shape) for p in parts]}")
    first = parts[0]
    if any(p.shape[0] != first.shape[0] or p.shape[2:] != first.shape[2:] for p in parts):
        raise ValueError(f"{op} parts must share batch, height and width, got {[tuple(p.shape) for p in parts]}")
    channels = sum(p.shape[1] for p in parts)
    for w in weights:
        if w.dim() != 4 or tuple(w.shape[1:]) != (channels, 1, 1):
            raise ValueError(f"{op} needs a (C_out, {channels}, 1, 1) weight for parts of {channels} channels in "
                             f"all, got {tuple(w.shape)}")
    if groups is not None and sum(groups) != first.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {first.shape[0]}")


def cat_conv1x1_bn_reference(parts: Sequence[torch.Tensor], weight: torch.Tensor, groups: Optional[Sequence[int]],
                             eps: float = EPS, relu_input: bool = False) -> torch.Tensor:
    x = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
    return conv1x1_bn(x, weight, groups, eps, relu_input)


dispatch.register("cat_conv1x1_bn", "reference", cat_conv1x1_bn_reference, composite=True)


def cat_conv1x1_bn(parts: Sequence[torch.Tensor], weight: torch.Tensor, groups: Optional[Sequence[int]] = None,
                   eps: float = EPS, relu_input: bool = False) -> torch.Tensor:
    """conv1x1_bn(torch.cat(parts, dim=1), weight, groups, eps, relu_input)."""
    parts = list(parts)
    _check_cat_inputs("cat_conv1x1_bn", parts, [weight], groups)
    return dispatch.call("cat_conv1x1_bn", parts, weight, tuple(groups) if groups is not None else None, eps, relu_input)


def cat_conv1x1_bn_each_reference(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                                  groups: Optional[Sequence[int]], eps: float = EPS,
                                  relu_input: bool = False) -> List[torch.Tensor]:
    x = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
    if relu_input:
        x = F.relu(x)
    return [conv1x1_bn(x, w, groups, eps) for w in weights]


dispatch.register("cat_conv1x1_bn_each", "reference", cat_conv1x1_bn_each_reference, composite=True)


def cat_conv1x1_bn_each(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                        groups: Optional[Sequence[int]] = None, eps: float = EPS,
                        relu_input: bool = False) -> List[torch.Tensor]:
    """[cat_conv1x1_bn(parts, w, groups, eps, relu_input) for w in weights]: the two cells that
    preprocess one cell output, which a fused kernel serves reading the input once."""
    weights, parts = list(weights), list(parts)
    if not weights:
        raise ValueError("cat_conv1x1_bn_each needs at least one weight")
    _check_cat_inputs("cat_conv1x1_bn_each", parts, weights, groups)
    return dispatch.call("cat_conv1x1_bn_each", parts, weights, tuple(groups) if groups is not None else None, eps,
                         relu_input)


def has_fused_cat_conv1x1_bn_each(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> bool:
    """Whether cat_conv1x1_bn_each reads its input once for all weights here (a fused kernel), or is
    the reference's one call per weight."""
    return dispatch.resolve("cat_conv1x1_bn_each", parts[0].device.type, list(parts), list(weights), None, EPS,
                            True)[0] != "reference"


def has_fused_cat_conv1x1_bn(parts: Sequence[torch.Tensor], weight: torch.Tensor, groups: Optional[Sequence[int]]) -> bool:
    """Whether cat_conv1x1_bn runs a fused kernel for these inputs (the reference concatenates, so
    a caller with several consumers of one concatenation does better sharing it)."""
    groups = tuple(groups) if groups is not None else None
    return dispatch.resolve("cat_conv1x1_bn", parts[0].device.type, list(parts), weight, groups, EPS, True)[0] != "reference"


def factorized_reduce_bn_reference(parts: Sequence[torch.Tensor], weight_a: torch.Tensor, weight_b: torch.Tensor,
                                  groups: Optional[Sequence[int]], eps: float = EPS) -> torch.Tensor:
    # BN normalises each channel on its own, so BN(cat(a, b)) = cat(BN(a), BN(b)).
    return torch.cat([cat_conv1x1_bn([p[:, :, ::2, ::2] for p in parts], weight_a, groups, eps, relu_input=True),
                      cat_conv1x1_bn([p[:, :, 1::2, 1::2] for p in parts], weight_b, groups, eps, relu_input=True)],
                     dim=1)


dispatch.register("factorized_reduce_bn", "reference", factorized_reduce_bn_reference, composite=True)


def factorized_reduce_bn(parts: Sequence[torch.Tensor], weight_a: torch.Tensor, weight_b: torch.Tensor,
                         groups: Optional[Sequence[int]] = None, eps: float = EPS) -> torch.Tensor:
    """BN(cat(conv1x1(relu(x[:, :, ::2, ::2]), weight_a), conv1x1(relu(x[:, :, 1::2, 1::2]), weight_b)))
    with x = torch.cat(parts, dim=1) (a cell output's nodes, read in place): the supernet's
    FactorizedReduce. Even heights and widths."""
    parts = list(parts)
    _check_cat_inputs("factorized_reduce_bn", parts, [weight_a, weight_b], groups)
    if parts[0].shape[2] % 2 or parts[0].shape[3] % 2:
        raise ValueError(f"factorized_reduce_bn needs even heights and widths, got {tuple(parts[0].shape)}")
    groups = tuple(groups) if groups is not None else None
    return dispatch.call("factorized_reduce_bn", parts, weight_a, weight_b, groups, eps)


def relu_conv_bn_reference(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: Optional[Sequence[int]],
                           eps: float = EPS) -> torch.Tensor:
    return group_batch_norm(relu_conv2d(x, weight, stride), groups, eps)


dispatch.register("relu_conv_bn", "reference", relu_conv_bn_reference, composite=True)


def relu_conv_bn(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: Optional[Sequence[int]] = None,
                 eps: float = EPS) -> torch.Tensor:
    """group_batch_norm(relu_conv2d(x, weight, stride), groups, eps): the supernet's conv_kxk
    ('same' padding k // 2)."""
    k = weight.shape[-1] if weight.dim() == 4 else None
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1] or weight.shape[2] != k or k % 2 == 0:
        raise ValueError(f"relu_conv_bn needs an (N, C, H, W) input and a (C_out, C, k, k) weight with k odd, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")
    return dispatch.call("relu_conv_bn", x, weight, stride, tuple(groups) if groups is not None else None, eps)


def dil_conv_bn_reference(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, stride: int,
                          dilation: int, groups: Optional[Sequence[int]], eps: float = EPS) -> torch.Tensor:
    return conv1x1_bn(relu_dwconv(x, dw_weight, stride, dilation), pw_weight, groups, eps)


dispatch.register("dil_conv_bn", "reference", dil_conv_bn_reference, composite=True)


def _check_dwconv_pointwise(op: str, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                            groups: Optional[Sequence[int]]) -> None:
    c = x.shape[1] if x.dim() == 4 else None
    if x.dim() != 4 or dw_weight.dim() != 4 or tuple(dw_weight.shape[:2]) != (c, 1) or \
            dw_weight.shape[2] != dw_weight.shape[3]:
        raise ValueError(f"{op} needs an (N, C, H, W) input and a (C, 1, k, k) depthwise weight, got "
                         f"{tuple(x.shape)} and {tuple(dw_weight.shape)}")
    if pw_weight.dim() != 4 or tuple(pw_weight.shape[1:]) != (c, 1, 1):
        raise ValueError(f"{op} needs a (C_out, {c}, 1, 1) pointwise weight, got {tuple(pw_weight.shape)}")
    if groups is not None and sum(groups) != x.shape[0]:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch size {x.shape[0]}")


def dil_conv_bn(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, stride: int = 1, dilation: int = 1,
                groups: Optional[Sequence[int]] = None, eps: float = EPS) -> torch.Tensor:
    """conv1x1_bn(relu_dwconv(x, dw_weight, stride, dilation), pw_weight, groups, eps): the supernet's
    DilConv."""
    _check_dwconv_pointwise("dil_conv_bn", x, dw_weight, pw_weight, groups)
    return dispatch.call("dil_conv_bn", x, dw_weight, pw_weight, stride, dilation,
                         tuple(groups) if groups is not None else None, eps)


def sep_conv_bn_reference(x: torch.Tensor, dw1: torch.Tensor, pw1: torch.Tensor, dw2: torch.Tensor, pw2: torch.Tensor,
                          stride: int, groups: Optional[Sequence[int]], eps: float = EPS) -> torch.Tensor:
    # The four dispatched ops (relu_dwconv, conv1x1_bn, twice), not the dil_conv_bn wrapper twice:
    # on a device without these fused kernels the scoring path then costs no more validation and
    # dispatch than the modules' own ops did.
    y = dil_conv_bn_reference(x, dw1, pw1, stride, 1, groups, eps)
    return dil_conv_bn_reference(y, dw2, pw2, 1, 1, groups, eps)


dispatch.register("sep_conv_bn", "reference", sep_conv_bn_reference, composite=True)


def sep_conv_bn(x: torch.Tensor, dw1: torch.Tensor, pw1: torch.Tensor, dw2: torch.Tensor, pw2: torch.Tensor,
                stride: int = 1, groups: Optional[Sequence[int]] = None, eps: float = EPS) -> torch.Tensor:
    """dil_conv_bn(dil_conv_bn(x, dw1, pw1, stride), dw2, pw2): the supernet's SepConv (only the first
    half strides)."""
    _check_dwconv_pointwise("sep_conv_bn", x, dw1, pw1, groups)
    if pw1.shape[0] != x.shape[1]:
        raise ValueError(f"sep_conv_bn's first pointwise weight keeps the {x.shape[1]} channels, got {tuple(pw1.shape)}")
    _check_dwconv_pointwise("sep_conv_bn", x, dw2, pw2, groups)
    return dispatch.call("sep_conv_bn", x, dw1, pw1, dw2, pw2, stride, tuple(groups) if groups is not None else None, eps)
