"""The CPU backend: the C++ kernels (csrc/cpu, operators natfast::cpu_*; those with a backward are C++
autograd operators, csrc/cpu/autograd.cpp), registered with dispatch as backend "cpu" for
`relu_dwconv`, `pool2d`, `group_batch_norm`, `pool_bn`, `conv1x1_bn` and `cat_conv1x1_bn`
(natfast/ops/fused.py); `cat_conv1x1_bn_each`,
`factorized_reduce_bn`, `relu_conv_bn`, `dil_conv_bn` and `sep_conv_bn` when autograd is not recording
(scoring); and `conv1x1` and `relu_conv2d` through torch (registered even without the extension;
relu_conv2d's k = 3, stride-1 case runs the extension's Winograd kernel where it is built).

The kernels take contiguous NCHW float32 (AVX2/FMA, 128-bit vectors or portable, chosen at run
time) or float64 (portable) tensors; anything else (other dtypes, windows wider than 7, stride > 2)
is declined (each op's `_limits_*` says why) and runs the reference. `dispatch.use_backend("reference")`
or NATFAST_BACKEND=reference switches them off.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import dispatch
from ..dispatch import Reason
from .. import fused  # noqa: F401  (defines the pool_bn and conv1x1_bn dispatch ops and their references)
from ... import _ext

OPERATORS = ("cpu_relu_dwconv", "cpu_pool2d", "cpu_group_batch_norm", "cpu_pool2d_bn", "cpu_conv1x1_bn",
             "cpu_relu_conv3x3_winograd", "cpu_winograd_fits", "cpu_conv1x1_bn_forward_each",
             "cpu_dwconv_pointwise_bn_forward", "cpu_relu_conv_bn_forward", "cpu_factorized_reduce_bn_forward")
_DTYPES = (torch.float32, torch.float64)
_MAX_KERNEL = 7  # kMaxKernel in csrc/cpu/plane_kernels.h


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


def relu_conv2d_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Winograd's F(2x2, 3x3) for the normal cells' conv_3x3 (k = 3, stride 1, even sizes;
    1.08-1.35x forward+backward, the forward alone 1.4-2.5x, bench/RESULTS.md); otherwise oneDNN's
    dense convolution, which is faster channels-last at the supernet's narrowest width (1.6x at
    C=20, 32x32, forward+backward, conversions included); the result goes back to NCHW, which the
    other CPU kernels take."""
    if _winograd_fits(x, weight, stride):
        return torch.ops.natfast.cpu_relu_conv3x3_winograd(x, weight)
    x = F.relu(x.contiguous(memory_format=torch.channels_last))
    w = weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w, None, stride, weight.shape[-1] // 2).contiguous()


# The kernels with a backward are C++ autograd operators (csrc/cpu/autograd.cpp: each forward paired
# with its backward once, for this backend and the compiled executor alike).
def relu_dwconv_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    return torch.ops.natfast.cpu_relu_dwconv(x, weight, stride, dilation)


def pool2d_cpu(x: torch.Tensor, kind: str, kernel: int, stride: int) -> torch.Tensor:
    return torch.ops.natfast.cpu_pool2d(x, kind, kernel, stride)


def group_batch_norm_cpu(x: torch.Tensor, groups: Optional[Sequence[int]], eps: float) -> torch.Tensor:
    return torch.ops.natfast.cpu_group_batch_norm(x, list(groups or ()), eps)


def pool_bn_cpu(x: torch.Tensor, kind: str, kernel: int, stride: int, groups: Optional[Sequence[int]],
                eps: float) -> torch.Tensor:
    return torch.ops.natfast.cpu_pool2d_bn(x, kind, kernel, stride, list(groups or ()), eps)


def conv1x1_cpu(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return Conv1x1.apply(x, weight, stride)


def conv1x1_bn_cpu(x: torch.Tensor, weight: torch.Tensor, groups: Optional[Sequence[int]], eps: float,
                   relu_input: bool) -> torch.Tensor:
    return torch.ops.natfast.cpu_conv1x1_bn([x], weight, list(groups or ()), eps, relu_input)


def cat_conv1x1_bn_cpu(parts: Sequence[torch.Tensor], weight: torch.Tensor, groups: Optional[Sequence[int]],
                       eps: float, relu_input: bool) -> torch.Tensor:
    return torch.ops.natfast.cpu_conv1x1_bn(list(parts), weight, list(groups or ()), eps, relu_input)


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
    """CPU float32/float64 (N, C, H, W), a square depthwise filter, odd windows up to 7, stride 1 or 2."""
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1] or weight.shape[2] != weight.shape[3]:
        return f"weight {tuple(weight.shape)} is not a square depthwise filter of the input's {x.shape[1]} channels"
    return _plain(x, weight) or _window(weight.shape[-1], stride, dilation)


def _winograd_fits(x, weight, stride) -> bool:
    """Whether the Winograd kernel takes this relu_conv2d (the rule is csrc/cpu/autograd.cpp's)."""
    return _ext.has_op("cpu_winograd_fits") and torch.ops.natfast.cpu_winograd_fits(x, weight, stride)


def _limits_relu_conv2d(x, weight, stride=1) -> Reason:
    """CPU float32 (N, C, H, W)."""
    # oneDNN runs the rest; this backend adds the layout (and Winograd), for float32 only.
    return _plain(x, weight) or (None if x.dtype == torch.float32 else f"{x.dtype} (float32 only)")


def _prefer_relu_conv2d(x, weight, stride=1) -> Reason:
    """up to 32 input channels, or Winograd (k = 3, stride 1, even sizes) at any width."""
    # Measured (bench/RESULTS.md): Winograd at every width; oneDNN channels-last 1.6x at C_in = 20,
    # none at 40 or 80.
    if x.shape[1] <= 32 or _winograd_fits(x, weight, stride):
        return None
    return f"{x.shape[1]} input channels without Winograd: oneDNN's NCHW convolution is as fast above 32"


def _limits_conv1x1(x, weight, stride=1) -> Reason:
    """CPU float32/float64 (N, C, H, W), a 1x1 filter."""
    if weight.dim() != 4 or weight.shape[2:] != (1, 1) or weight.shape[1] != x.shape[1]:
        return f"weight {tuple(weight.shape)} is not a 1x1 filter of the input's {x.shape[1]} channels"
    return _plain(x, weight) or (f"stride {stride}" if stride < 1 else None)


def _limits_pool2d(x, kind, kernel, stride) -> Reason:
    """CPU float32/float64 (N, C, H, W), odd windows up to 7, stride 1 or 2."""
    return _plain(x) or _window(kernel, stride)


def _limits_group_batch_norm(x, groups, eps) -> Reason:
    """CPU float32/float64 (N, C, H, W), more than one value per channel in each group."""
    return _plain(x) or _bn_values(groups, x.shape[0], x.shape[2] * x.shape[3])


def _limits_pool_bn(x, kind, kernel, stride, groups, eps) -> Reason:
    """as pool2d and group_batch_norm."""
    return _limits_pool2d(x, kind, kernel, stride) or _bn_values(groups, x.shape[0], _out_pixels(x, stride))


def _limits_conv1x1_bn(x, weight, groups, eps, relu_input) -> Reason:
    """CPU float32/float64 (N, C, H, W), more than one value per channel in each group."""
    return _plain(x, weight) or _bn_values(groups, x.shape[0], x.shape[2] * x.shape[3])


def _limits_cat_conv1x1_bn(parts, weight, groups, eps, relu_input) -> Reason:
    """as conv1x1_bn, for every part."""
    return _plain(*parts, weight) or _bn_values(groups, parts[0].shape[0], parts[0].shape[2] * parts[0].shape[3])


def _limits_dil_conv_bn(x, dw_weight, pw_weight, stride, dilation, groups, eps) -> Reason:
    """as relu_dwconv and conv1x1_bn."""
    return (_limits_relu_dwconv(x, dw_weight, stride, dilation) or _plain(x, pw_weight)
            or _bn_values(groups, x.shape[0], _out_pixels(x, stride)))


def _limits_factorized_reduce_bn(parts, weight_a, weight_b, groups, eps) -> Reason:
    """as cat_conv1x1_bn on the stride-2 halves."""
    halves = [p[:, :, ::2, ::2] for p in parts]
    return _plain(*parts, weight_a, weight_b) or _limits_cat_conv1x1_bn(halves, weight_a, groups, eps, True)


def _limits_relu_conv_bn(x, weight, stride, groups, eps) -> Reason:
    """CPU float32/float64 (N, C, H, W), odd windows up to 7, stride 1 or 2, more than one value per channel."""
    return (_plain(x, weight) or _window(weight.shape[-1], stride)
            or _bn_values(groups, x.shape[0], _out_pixels(x, stride)))


def _prefer_relu_conv_bn(x, weight, stride, groups, eps) -> Reason:
    """up to 32 input channels, or Winograd (k = 3, stride 1, even sizes) at any width."""
    # Measured faster than oneDNN's convolution and the BN kernel (bench/RESULTS.md): Winograd's
    # F(2x2, 3x3) (k = 3, stride 1, even sizes) at every width, 1.45-2x; the direct GEMM at up to
    # 32 input channels (1.4x at 20; at 40 no faster, at 80 slower).
    if x.shape[1] <= 32 or _winograd_fits(x, weight, stride):
        return None
    return f"{x.shape[1]} input channels without Winograd: oneDNN's convolution and the BN kernel are faster"


def _limits_cat_conv1x1_bn_each(parts, weights, groups, eps, relu_input) -> Reason:
    """as cat_conv1x1_bn, all weights of one dtype."""
    return _plain(*parts, *weights) or _limits_cat_conv1x1_bn(parts, weights[0], groups, eps, relu_input)


def _limits_sep_conv_bn(x, dw1, pw1, dw2, pw2, stride, groups, eps) -> Reason:
    """as dil_conv_bn for both halves (dilation 1)."""
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
