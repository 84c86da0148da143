"""The CPU backend: the C++ kernels (csrc/cpu, operators natfast::cpu_*) as autograd functions,
registered with dispatch as backend "cpu" for `relu_dwconv`, `pool2d`, `group_batch_norm`,
`pool_bn`, `conv1x1_bn` and `cat_conv1x1_bn` (natfast/ops/fused.py); `cat_conv1x1_bn_each`,
`factorized_reduce_bn`, `relu_conv_bn`, `dil_conv_bn` and `sep_conv_bn` when autograd is not recording
(scoring); and `conv1x1` and `relu_conv2d` through torch (registered even without the extension;
relu_conv2d's k = 3, stride-1 case runs the extension's Winograd kernel where it is built).

The kernels take contiguous NCHW float32 (AVX2/FMA, 128-bit vectors or portable, chosen at run
time) or float64 (portable) tensors; anything else (other dtypes, windows wider than 7, stride > 2)
is declined (each op's `_limits_*` says why) and runs the reference. `dispatch.use_backend("reference")` or
NATFAST_BACKEND=reference switches them off.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import dispatch
from ..dispatch import Reason
from .. import fused  # noqa: F401  (defines the pool_bn and conv1x1_bn dispatch ops and their references)
from ... import _ext

OPERATORS = ("cpu_relu_dwconv_forward", "cpu_relu_dwconv_backward", "cpu_pool2d_forward", "cpu_pool2d_backward",
             "cpu_group_batch_norm_forward", "cpu_group_batch_norm_backward", "cpu_pool2d_bn_forward",
             "cpu_pool2d_bn_backward", "cpu_conv1x1_bn_forward", "cpu_conv1x1_bn_forward_each",
             "cpu_conv1x1_bn_backward", "cpu_dwconv_pointwise_bn_forward", "cpu_relu_conv_bn_forward",
             "cpu_factorized_reduce_bn_forward")
_DTYPES = (torch.float32, torch.float64)
_MAX_KERNEL = 7  # kMaxKernel in csrc/cpu/plane_kernels.h


class ReluDwconv(torch.autograd.Function):
    """conv2d(relu(x), weight, groups=C), 'same' padding."""

    @staticmethod
    def forward(ctx, x, weight, stride: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.dilation = stride, dilation
        return torch.ops.natfast.cpu_relu_dwconv_forward(x, weight, stride, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = torch.ops.natfast.cpu_relu_dwconv_backward(grad_y, x, weight, ctx.stride, ctx.dilation)
        return grad_x, grad_w, None, None


class Pool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind: str, kernel: int, stride: int):
        ctx.save_for_backward(x)
        ctx.conf = (kind, kernel, stride)
        return torch.ops.natfast.cpu_pool2d_forward(x, kind, kernel, stride)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return torch.ops.natfast.cpu_pool2d_backward(grad_y, x, *ctx.conf), None, None, None


class GroupBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups: Sequence[int], eps: float):
        y, mean, rstd = torch.ops.natfast.cpu_group_batch_norm_forward(x, list(groups), eps)
        ctx.save_for_backward(x, mean, rstd)
        ctx.groups = list(groups)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, rstd = ctx.saved_tensors
        return torch.ops.natfast.cpu_group_batch_norm_backward(grad_y, x, mean, rstd, ctx.groups), None, None


class PoolBatchNorm(torch.autograd.Function):
    """group_batch_norm(pool2d(x)) in one pass each way; saves x and the pooled tensor (as the two
    unfused ops would)."""

    @staticmethod
    def forward(ctx, x, kind: str, kernel: int, stride: int, groups: Sequence[int], eps: float):
        y, pooled, mean, rstd = torch.ops.natfast.cpu_pool2d_bn_forward(x, kind, kernel, stride, list(groups), eps)
        ctx.save_for_backward(x, pooled, mean, rstd)
        ctx.conf = (kind, kernel, stride, list(groups))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, pooled, mean, rstd = ctx.saved_tensors
        grad_x = torch.ops.natfast.cpu_pool2d_bn_backward(grad_y, x, pooled, mean, rstd, *ctx.conf)
        return grad_x, None, None, None, None, None


class Conv1x1BatchNorm(torch.autograd.Function):
    """group_batch_norm(conv1x1(relu?(cat(parts, dim=1)))) one sample at a time
    (csrc/cpu/pointwise_bn.cpp), reading the parts in place. Saves the parts and the output (which,
    with affine=False, is the normalised value the backward needs): the unfused ops would save the
    concatenation, its ReLU and the convolution's output."""

    @staticmethod
    def forward(ctx, weight, groups: Sequence[int], eps: float, relu_input: bool, *parts):
        y, rstd = torch.ops.natfast.cpu_conv1x1_bn_forward(list(parts), weight, list(groups), eps, relu_input)
        ctx.save_for_backward(weight, y, rstd, *parts)
        ctx.conf = (list(groups), relu_input)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        weight, y, rstd, *parts = ctx.saved_tensors
        grad_parts, grad_w = torch.ops.natfast.cpu_conv1x1_bn_backward(grad_y, parts, weight, y, rstd, *ctx.conf)
        return (grad_w, None, None, None, *grad_parts)


class Conv1x1(torch.autograd.Function):
    """1x1 convolution as one batched GEMM per pass on the NCHW tensor, (Co, Ci) @ (Ci, H*W) per
    sample: MKL's sgemm at these small channel counts is several times faster than oneDNN's
    convolution (bench/RESULTS.md), and no layout conversion is needed."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        ctx.input_shape, ctx.stride = x.shape, stride
        if stride > 1:
            x = x[:, :, ::stride, ::stride]
        n, ci, h, w = x.shape
        inputs = x.reshape(n, ci, h * w)
        weights = weight.reshape(weight.shape[0], ci)
        ctx.save_for_backward(inputs, weights)
        ctx.shape = (n, ci, h, w)
        # bmm, not matmul: matmul folds (2-D) @ (3-D) into one mm through transposed copies.
        return torch.bmm(weights.expand(n, *weights.shape), inputs).view(n, -1, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        inputs, weights = ctx.saved_tensors
        n, ci, h, w = ctx.shape
        grads = grad_y.reshape(n, -1, h * w)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(weights.t().expand(n, ci, weights.shape[0]), grads).view(n, ci, h, w)
            if ctx.stride > 1:  # the skipped pixels get no gradient
                full = grad_x.new_zeros(ctx.input_shape)
                full[:, :, ::ctx.stride, ::ctx.stride] = grad_x
                grad_x = full
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grads, inputs.transpose(1, 2)).sum(0).view(*weights.shape, 1, 1)
        return grad_x, grad_w, None


class ReluConv3x3Winograd(torch.autograd.Function):
    """relu_conv2d for k = 3, stride 1, even sizes, by Winograd's F(2x2, 3x3) (csrc/cpu/conv_bn.cpp).
    The input gradient is the same kind of convolution, of the output gradient with the weight
    transposed and flipped, then masked by the ReLU; the weight gradient is oneDNN's alone."""

    @staticmethod
    def forward(ctx, x, weight):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        return torch.ops.natfast.cpu_conv3x3_winograd(x, weight, True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            flipped = weight.transpose(0, 1).flip(2, 3)
            grad_r = torch.ops.natfast.cpu_conv3x3_winograd(grad_y.contiguous(), flipped, False)
            grad_x = torch.ops.aten.threshold_backward(grad_r, x, 0)  # where x > 0, as F.relu's backward
        if ctx.needs_input_grad[1]:
            # Channels-last is oneDNN's faster layout up to 32 channels (as relu_conv2d_cpu).
            layout = torch.channels_last if x.shape[1] <= 32 else torch.contiguous_format
            grad_w = torch.ops.aten.convolution_backward(
                grad_y.contiguous(memory_format=layout), F.relu(x).contiguous(memory_format=layout),
                weight.contiguous(memory_format=layout), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [False, True, False])[1].contiguous()
        return grad_x, grad_w


def relu_conv2d_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Winograd's F(2x2, 3x3) for the normal cells' conv_3x3 (k = 3, stride 1, even sizes;
    1.08-1.35x forward+backward, the forward alone 1.4-2.5x, bench/RESULTS.md); otherwise oneDNN's
    dense convolution, which is faster channels-last at the supernet's narrowest width (1.6x at
    C=20, 32x32, forward+backward, conversions included); the result goes back to NCHW, which the
    other CPU kernels take."""
    if _winograd_fits(x, weight, stride):
        return ReluConv3x3Winograd.apply(x, weight)
    x = F.relu(x.contiguous(memory_format=torch.channels_last))
    w = weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w, None, stride, weight.shape[-1] // 2).contiguous()


def relu_dwconv_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    return ReluDwconv.apply(x, weight, stride, dilation)


def pool2d_cpu(x: torch.Tensor, kind: str, kernel: int, stride: int) -> torch.Tensor:
    return Pool2d.apply(x, kind, kernel, stride)


def group_batch_norm_cpu(x: torch.Tensor, groups: Optional[Sequence[int]], eps: float) -> torch.Tensor:
    return GroupBatchNorm.apply(x, tuple(groups) if groups is not None else (), eps)


def pool_bn_cpu(x: torch.Tensor, kind: str, kernel: int, stride: int, groups: Optional[Sequence[int]],
                eps: float) -> torch.Tensor:
    return PoolBatchNorm.apply(x, kind, kernel, stride, tuple(groups) if groups is not None else (), eps)


def conv1x1_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return Conv1x1.apply(x, weight, stride)


def conv1x1_bn_cpu(x: torch.Tensor, weight: torch.Tensor, groups: Optional[Sequence[int]], eps: float,
                   relu_input: bool) -> torch.Tensor:
    return Conv1x1BatchNorm.apply(weight, tuple(groups) if groups is not None else (), eps, relu_input, x)


def cat_conv1x1_bn_cpu(parts: Sequence[torch.Tensor], weight: torch.Tensor, groups: Optional[Sequence[int]],
                       eps: float, relu_input: bool) -> torch.Tensor:
    return Conv1x1BatchNorm.apply(weight, tuple(groups) if groups is not None else (), eps, relu_input, *parts)


def cat_conv1x1_bn_each_cpu(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                            groups: Optional[Sequence[int]], eps: float, relu_input: bool) -> List[torch.Tensor]:
    return torch.ops.natfast.cpu_conv1x1_bn_forward_each(list(parts), list(weights), list(groups or ()), eps,
                                                         relu_input)


def dil_conv_bn_cpu(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, stride: int, dilation: int,
                    groups: Optional[Sequence[int]], eps: float) -> torch.Tensor:
    return torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(x, None, None, dw_weight, pw_weight, stride, dilation,
                                                             list(groups or ()), eps, True)[0]


def factorized_reduce_bn_cpu(parts: Sequence[torch.Tensor], weight_a: torch.Tensor, weight_b: torch.Tensor,
                             groups: Optional[Sequence[int]], eps: float) -> torch.Tensor:
    return torch.ops.natfast.cpu_factorized_reduce_bn_forward([p[:, :, ::2, ::2] for p in parts],
                                                              [p[:, :, 1::2, 1::2] for p in parts], weight_a, weight_b,
                                                              list(groups or ()), eps, True)


def relu_conv_bn_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: Optional[Sequence[int]],
                     eps: float) -> torch.Tensor:
    return torch.ops.natfast.cpu_relu_conv_bn_forward(x, weight, stride, list(groups or ()), eps)


def sep_conv_bn_cpu(x: torch.Tensor, dw1: torch.Tensor, pw1: torch.Tensor, dw2: torch.Tensor, pw2: torch.Tensor,
                    stride: int, groups: Optional[Sequence[int]], eps: float) -> torch.Tensor:
    # The first half's normalisation is applied by the second half as it reads each plane.
    groups = list(groups or ())
    raw, scale, shift = torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(x, None, None, dw1, pw1, stride, 1, groups,
                                                                         eps, False)
    return torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(raw, scale, shift, dw2, pw2, 1, 1, groups, eps, True)[0]


def _plain(*tensors: torch.Tensor) -> Reason:
    """The kernels' common limits: 4-D CPU tensors of one float type they are built for."""
    first = tensors[0]
    if first.device.type != "cpu":
        return f"a {first.device.type} tensor (CPU kernels)"
    if first.dim() != 4:
        return f"a {first.dim()}-D input (kernels take N, C, H, W)"
    if first.dtype not in _DTYPES:
        return f"{first.dtype} (kernels are built for float32 and float64)"
    if any(t.dtype != first.dtype for t in tensors[1:]):
        return f"mixed dtypes {sorted({str(t.dtype) for t in tensors})}"
    return None


def _bn_values(groups, batch: int, pixels: int) -> Reason:
    # BN of a single value per channel is an error; the reference raises it (same message everywhere).
    return "one value per channel in a BN group" if (min(groups) if groups else batch) * pixels <= 1 else None


def _out_pixels(x: torch.Tensor, stride: int) -> int:
    return ((x.shape[2] - 1) // stride + 1) * ((x.shape[3] - 1) // stride + 1)


def _window(kernel: int, stride: int, dilation: int = 1) -> Reason:
    if kernel % 2 == 0 or kernel > _MAX_KERNEL:
        return f"a {kernel}x{kernel} window (odd sizes up to {_MAX_KERNEL})"
    if stride not in (1, 2):
        return f"stride {stride} (1 or 2)"
    if dilation < 1:
        return f"dilation {dilation}"
    return None


def _limits_relu_dwconv(x, weight, stride, dilation) -> Reason:
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1] or weight.shape[2] != weight.shape[3]:
        return f"weight {tuple(weight.shape)} is not a square depthwise filter of the input's {x.shape[1]} channels"
    return _plain(x, weight) or _window(weight.shape[-1], stride, dilation)


@functools.lru_cache(maxsize=None)
def _has_winograd() -> bool:
    return _ext.has_op("cpu_conv3x3_winograd")


def _winograd_fits(x, weight, stride) -> bool:
    """Whether cpu_conv3x3_winograd takes this relu_conv2d (as its checks in csrc/cpu/conv_bn.cpp)."""
    return (stride == 1 and weight.dim() == 4 and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and _has_winograd())


def _limits_relu_conv2d(x, weight, stride=1) -> Reason:
    # oneDNN runs the rest; this backend adds the layout (and Winograd), for float32 only.
    return _plain(x, weight) or (None if x.dtype == torch.float32 else f"{x.dtype} (float32 only)")


def _prefer_relu_conv2d(x, weight, stride=1) -> Reason:
    # Measured (bench/RESULTS.md): Winograd at every width; oneDNN channels-last 1.6x at C_in = 20,
    # none at 40 or 80.
    if x.shape[1] <= 32 or _winograd_fits(x, weight, stride):
        return None
    return f"{x.shape[1]} input channels without Winograd: oneDNN's NCHW convolution is as fast above 32"


def _limits_conv1x1(x, weight, stride=1) -> Reason:
    if weight.dim() != 4 or weight.shape[2:] != (1, 1) or weight.shape[1] != x.shape[1]:
        return f"weight {tuple(weight.shape)} is not a 1x1 filter of the input's {x.shape[1]} channels"
    return _plain(x, weight) or (f"stride {stride}" if stride < 1 else None)


def _limits_pool2d(x, kind, kernel, stride) -> Reason:
    return _plain(x) or _window(kernel, stride)


def _limits_group_batch_norm(x, groups, eps) -> Reason:
    return _plain(x) or _bn_values(groups, x.shape[0], x.shape[2] * x.shape[3])


def _limits_pool_bn(x, kind, kernel, stride, groups, eps) -> Reason:
    return _limits_pool2d(x, kind, kernel, stride) or _bn_values(groups, x.shape[0], _out_pixels(x, stride))


def _limits_conv1x1_bn(x, weight, groups, eps, relu_input) -> Reason:
    return _plain(x, weight) or _bn_values(groups, x.shape[0], x.shape[2] * x.shape[3])


def _limits_cat_conv1x1_bn(parts, weight, groups, eps, relu_input) -> Reason:
    return _plain(*parts, weight) or _bn_values(groups, parts[0].shape[0], parts[0].shape[2] * parts[0].shape[3])


def _limits_dil_conv_bn(x, dw_weight, pw_weight, stride, dilation, groups, eps) -> Reason:
    return (_limits_relu_dwconv(x, dw_weight, stride, dilation) or _plain(x, pw_weight)
            or _bn_values(groups, x.shape[0], _out_pixels(x, stride)))


def _limits_factorized_reduce_bn(parts, weight_a, weight_b, groups, eps) -> Reason:
    halves = [p[:, :, ::2, ::2] for p in parts]
    return _plain(*parts, weight_a, weight_b) or _limits_cat_conv1x1_bn(halves, weight_a, groups, eps, True)


def _limits_relu_conv_bn(x, weight, stride, groups, eps) -> Reason:
    return (_plain(x, weight) or _window(weight.shape[-1], stride)
            or _bn_values(groups, x.shape[0], _out_pixels(x, stride)))


def _prefer_relu_conv_bn(x, weight, stride, groups, eps) -> Reason:
    # Measured faster than oneDNN's convolution and the BN kernel (bench/RESULTS.md): Winograd's
    # F(2x2, 3x3) (k = 3, stride 1, even sizes) at every width, 1.45-2x; the direct GEMM at up to
    # 32 input channels (1.4x at 20; at 40 no faster, at 80 slower).
    winograd = weight.shape[-1] == 3 and stride == 1 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
    if winograd or x.shape[1] <= 32:
        return None
    return f"{x.shape[1]} input channels without Winograd: oneDNN's convolution and the BN kernel are faster"


def _limits_cat_conv1x1_bn_each(parts, weights, groups, eps, relu_input) -> Reason:
    return _plain(*parts, *weights) or _limits_cat_conv1x1_bn(parts, weights[0], groups, eps, relu_input)


def _limits_sep_conv_bn(x, dw1, pw1, dw2, pw2, stride, groups, eps) -> Reason:
    # The second half reads the first's output: x's channels (sep_conv_bn checks), stride 1.
    return (_limits_dil_conv_bn(x, dw1, pw1, stride, 1, groups, eps) or _limits_relu_dwconv(x, dw2, 1, 1)
            or _plain(x, pw2))


def register() -> str:
    """Register conv1x1 and relu_conv2d (through torch, always) and the C++ kernels when the extension
    provides them."""
    try:
        dispatch.register("conv1x1", "cpu", conv1x1_cpu, _limits_conv1x1)
        dispatch.register("relu_conv2d", "cpu", relu_conv2d_cpu, _limits_relu_conv2d, _prefer_relu_conv2d)
        module, why = _ext.load()
        missing = [name for name in OPERATORS if not _ext.has_op(name)] if module is not None else []
        if module is None or missing:
            reason = why if module is None else f"the extension lacks {', '.join(missing)}"
            return f"active: conv1x1, relu_conv2d; C++ kernels inactive: {reason}"
        for op, fn, limits in (("relu_dwconv", relu_dwconv_cpu, _limits_relu_dwconv),
                               ("pool2d", pool2d_cpu, _limits_pool2d),
                               ("pool_bn", pool_bn_cpu, _limits_pool_bn),
                               ("group_batch_norm", group_batch_norm_cpu, _limits_group_batch_norm),
                               ("conv1x1_bn", conv1x1_bn_cpu, _limits_conv1x1_bn),
                               ("cat_conv1x1_bn", cat_conv1x1_bn_cpu, _limits_cat_conv1x1_bn)):
            dispatch.register(op, "cpu", fn, limits)
        # Forward-only kernels: chosen when autograd records nothing (scoring architectures).
        for op, fn, limits in (("cat_conv1x1_bn_each", cat_conv1x1_bn_each_cpu, _limits_cat_conv1x1_bn_each),
                               ("dil_conv_bn", dil_conv_bn_cpu, _limits_dil_conv_bn),
                               ("sep_conv_bn", sep_conv_bn_cpu, _limits_sep_conv_bn),
                               ("factorized_reduce_bn", factorized_reduce_bn_cpu, _limits_factorized_reduce_bn)):
            dispatch.register(op, "cpu", fn, limits, scoring_only=True)
        dispatch.register("relu_conv_bn", "cpu", relu_conv_bn_cpu, _limits_relu_conv_bn, _prefer_relu_conv_bn,
                          scoring_only=True)
        return ("active: relu_dwconv, pool2d, group_batch_norm, pool_bn, conv1x1_bn, cat_conv1x1_bn, conv1x1, "
                "relu_conv2d, cat_conv1x1_bn_each, factorized_reduce_bn, relu_conv_bn, dil_conv_bn and sep_conv_bn "
                "(scoring)")
    except Exception as exc:  # never fail `import natfast.ops`
        return f"inactive: {type(exc).__name__}: {exc}"
