"""The CPU backend (csrc/cpu kernels and the GEMM-based 1x1 convolution) against the reference path,
forward and backward: fused ReLU + depthwise conv, max/avg pooling, per-group BN, 1x1 convolution,
1x1 convolution + BN (with BLAS and with natfast's own GEMM);
gradcheck in float64; the 128-bit and portable (non-AVX2) builds; a few supernet training steps fast vs
reference."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natfast import _ext
from natfast.benchmarks.ops import bench_ops
from natfast.genotype import get_family
from natfast.ops import dispatch
from natfast.ops.backends import cpu as cpu_backend
from natfast.ops.depthwise import relu_dwconv_reference
from natfast.ops.fused import cat_conv1x1_bn_reference, conv1x1_bn_reference, pool_bn_reference
from natfast.ops.norm import EPS, group_batch_norm_reference
from natfast.ops.pointwise import conv1x1_reference
from natfast.ops.pool import pool2d_reference
from natfast.sampler import sample_genotype
from natfast.supernet import Supernet

_MISSING = [name for name in cpu_backend.OPERATORS if not _ext.has_op(name)]
needs_kernels = pytest.mark.skipif(bool(_MISSING), reason=f"natfast._C (or NATFAST_EXTENSION) lacks "
                                   f"{', '.join(_MISSING)}: build it (pip install --no-build-isolation -e .)")

# float32: the kernels sum in another order than oneDNN/ATen (and use FMA); float64: rounding only.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# (N, C, H, W): odd sizes, batch 1, planes narrower than one vector, a 1 x 1 plane.
SHAPES = [(2, 3, 9, 7), (1, 4, 8, 8), (3, 2, 16, 13), (2, 5, 5, 5), (1, 2, 2, 3), (2, 1, 1, 1), (2, 3, 33, 17)]


def _random(shape, dtype, gen):
    return torch.randn(shape, dtype=dtype, generator=gen)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x in another memory layout (the kernels must not assume contiguity)."""
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a wider tensor
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _run(fn, inputs, grad_out):
    """fn(*inputs) and the gradients of <fn(*inputs), grad_out> for the floating inputs."""
    leaves = [t.detach().clone().requires_grad_(True) if torch.is_tensor(t) else t for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves if torch.is_tensor(t)]


def _assert_same(fast, ref, dtype):
    (y_fast, grads_fast), (y_ref, grads_ref) = fast, ref
    torch.testing.assert_close(y_fast, y_ref, **TOL[dtype])
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, **TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# Every window the kernels accept: odd sizes up to 7, any dilation (3 makes a 7x7 filter span 19).
@pytest.mark.parametrize("kernel,stride,dilation", [(k, s, d) for k in (1, 3, 5, 7) for s in (1, 2) for d in (1, 2, 3)])
def test_relu_dwconv_equals_reference(dtype, kernel, stride, dilation):
    gen = torch.Generator().manual_seed(kernel * 100 + stride * 10 + dilation)
    for shape in SHAPES:
        x = _random(shape, dtype, gen)
        w = _random((shape[1], 1, kernel, kernel), dtype, gen)
        ref_y = relu_dwconv_reference(x, w, stride, dilation)
        g = _random(ref_y.shape, dtype, gen)
        ref = _run(lambda a, b: relu_dwconv_reference(a, b, stride, dilation), [x, w], g)
        fast = _run(lambda a, b: cpu_backend.relu_dwconv_cpu(a, b, stride, dilation), [x, w], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_relu_dwconv_non_contiguous(layout):
    gen = torch.Generator().manual_seed(1)
    x = _random((2, 8, 11, 12), torch.float32, gen)
    w = _random((8, 1, 3, 3), torch.float32, gen)
    g = _random((2, 8, 6, 6), torch.float32, gen)
    ref = _run(lambda a, b: relu_dwconv_reference(a, b, 2, 1), [x, w], g)
    fast = _run(lambda a, b: cpu_backend.relu_dwconv_cpu(_layout(a, layout), b, 2, 1), [x, w],
                _layout(g, layout))
    _assert_same(fast, ref, torch.float32)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel,stride", [(k, s) for k in (1, 3, 5, 7) for s in (1, 2)])
def test_pool2d_equals_reference(dtype, kind, kernel, stride):
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    for shape in SHAPES:
        x = _random(shape, dtype, gen)
        g = _random(pool2d_reference(x, kind, kernel, stride).shape, dtype, gen)
        ref = _run(lambda a: pool2d_reference(a, kind, kernel, stride), [x], g)
        fast = _run(lambda a: cpu_backend.pool2d_cpu(a, kind, kernel, stride), [x], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_ties_go_to_the_first_maximum(stride):
    # Few distinct values: most windows hold several maxima; PyTorch routes the gradient to the first.
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (2, 3, 10, 9), generator=gen).double()
    g = _random(pool2d_reference(x, "max", 3, stride).shape, torch.float64, gen)
    ref = _run(lambda a: pool2d_reference(a, "max", 3, stride), [x], g)
    fast = _run(lambda a: cpu_backend.pool2d_cpu(a, "max", 3, stride), [x], g)
    _assert_same(fast, ref, torch.float64)


@needs_kernels
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_non_contiguous(layout, kind):
    gen = torch.Generator().manual_seed(3)
    x = _random((2, 8, 9, 10), torch.float32, gen)
    g = _random((2, 8, 9, 10), torch.float32, gen)
    ref = _run(lambda a: pool2d_reference(a, kind, 3, 1), [x], g)
    fast = _run(lambda a: cpu_backend.pool2d_cpu(_layout(a, layout), kind, 3, 1), [x], _layout(g, layout))
    _assert_same(fast, ref, torch.float32)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [None, (3, 3), (1, 4, 1), (6,)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_group_batch_norm_equals_reference(dtype, groups, layout):
    gen = torch.Generator().manual_seed(4)
    for hw in [(7, 5), (8, 8), (1, 2)]:
        # A mean far from zero and a non-unit scale: the variance must not lose precision.
        x = _random((6, 5, *hw), dtype, gen) * 3 + 2
        g = _random(x.shape, dtype, gen)
        ref = _run(lambda a: group_batch_norm_reference(a, groups), [x], g)
        fast = _run(lambda a: cpu_backend.group_batch_norm_cpu(_layout(a, layout), groups, 1e-5), [x], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1)])
@pytest.mark.parametrize("groups", [None, (2, 1, 3)])
def test_pool_bn_equals_reference(dtype, kind, kernel, stride, groups):
    gen = torch.Generator().manual_seed(8)
    # Not planes the window covers whole: max pooling would make a one-sample group constant, and
    # BN of a constant (variance ~ 0) only amplifies float32 rounding.
    for hw in [(9, 7), (16, 16), (5, 6)]:
        x = _random((6, 4, *hw), dtype, gen) * 2 + 1
        ref_fn = lambda a: pool_bn_reference(_layout(a, "channels_last"), kind, kernel, stride, groups)
        with dispatch.use_backend("reference"):
            g = _random(ref_fn(x).shape, dtype, gen)
            ref = _run(ref_fn, [x], g)
        fast = _run(lambda a: cpu_backend.pool_bn_cpu(_layout(a, "channels_last"), kind, kernel, stride, groups, 1e-5),
                    [x], g)
        _assert_same(fast, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "shifted"])
def test_conv1x1_equals_reference(dtype, stride, layout):
    gen = torch.Generator().manual_seed(7)
    for shape in [(2, 6, 9, 8), (1, 3, 4, 5), (3, 5, 2, 2)]:
        x = _random(shape, dtype, gen)
        w = _random((4, shape[1], 1, 1), dtype, gen)
        # "shifted": FactorizedReduce's second branch, x[:, :, 1:, 1:] (a non-contiguous view).
        view = (lambda a: a[:, :, 1:, 1:]) if layout == "shifted" else (lambda a: _layout(a, layout))
        g = _random(conv1x1_reference(view(x), w, stride).shape, dtype, gen)
        ref = _run(lambda a, b: conv1x1_reference(view(a), b, stride), [x, w], g)
        fast = _run(lambda a, b: cpu_backend.conv1x1_cpu(view(a), b, stride), [x, w], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    x = _random((2, 3, 5, 6), torch.float64, gen).requires_grad_()
    for k, s, d in [(3, 1, 1), (3, 2, 2), (5, 2, 1)]:
        w = _random((3, 1, k, k), torch.float64, gen).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: cpu_backend.relu_dwconv_cpu(a, b, s, d), (x, w))
    for kind in ("max", "avg"):
        for s in (1, 2):
            assert torch.autograd.gradcheck(lambda a: cpu_backend.pool2d_cpu(a, kind, 3, s), (x,))
    assert torch.autograd.gradcheck(lambda a: cpu_backend.group_batch_norm_cpu(a, (1, 1), 1e-5), (x,))
    for kind in ("max", "avg"):
        assert torch.autograd.gradcheck(lambda a: cpu_backend.pool_bn_cpu(a, kind, 3, 2, (1, 1), 1e-5), (x,))
    w1 = _random((4, 3, 1, 1), torch.float64, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cpu_backend.conv1x1_cpu(a, b, 2), (x, w1))


@needs_kernels
def test_weight_gradient_does_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(6)
    x = _random((16, 4, 16, 16), torch.float32, gen)
    w = _random((4, 1, 3, 3), torch.float32, gen)
    g = _random((16, 4, 16, 16), torch.float32, gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.natfast.cpu_relu_dwconv_backward(g, x, w, 1, 1)[1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@needs_kernels
def test_dispatch_picks_the_kernels_and_can_be_switched_off():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3)
    assert dispatch.resolve("relu_dwconv", "cpu", x, w, 1, 1)[0] == "cpu"
    assert dispatch.resolve("pool2d", "cpu", x, "avg", 3, 2)[0] == "cpu"
    assert dispatch.resolve("group_batch_norm", "cpu", x, (1, 1), 1e-5)[0] == "cpu"
    assert dispatch.resolve("conv1x1", "cpu", x, torch.randn(4, 3, 1, 1), 2)[0] == "cpu"
    assert dispatch.resolve("pool_bn", "cpu", x, "max", 3, 1, None, 1e-5)[0] == "cpu"
    assert dispatch.resolve("conv1x1_bn", "cpu", x, torch.randn(4, 3, 1, 1), None, 1e-5, True)[0] == "cpu"
    with dispatch.use_backend("reference"):
        assert dispatch.resolve("relu_dwconv", "cpu", x, w, 1, 1)[0] == "reference"
    # What the kernels do not handle goes to the reference.
    assert dispatch.resolve("relu_dwconv", "cpu", x.half(), w.half(), 1, 1)[0] == "reference"
    assert dispatch.resolve("pool2d", "cpu", x, "max", 3, 3)[0] == "reference"
    assert dispatch.resolve("group_batch_norm", "cpu", x[:1, :, :1, :1], None, 1e-5)[0] == "reference"


_PORTABLE_CHECK = """
import torch
from natfast.ops import dispatch
from natfast.ops.backends import cpu
from natfast.ops.conv import relu_conv2d_reference
from natfast.ops.depthwise import relu_dwconv_reference
from natfast.ops.fused import (conv1x1_bn_reference, factorized_reduce_bn_reference, relu_conv_bn_reference,
                               sep_conv_bn_reference)
from natfast.ops.norm import group_batch_norm_reference
from natfast.ops.pool import pool2d_reference


def plain(fn):  # the reference on plain PyTorch: fused references call dispatched ops, which would run this build
    def run(*args):
        with dispatch.use_backend("reference"):
            return fn(*args)
    return run


def same(fast, ref):
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


torch.manual_seed(0)
x = torch.randn(2, 3, 13, 11)
for s in (1, 2):
    w = torch.randn(3, 1, 3, 3)
    same(cpu.relu_dwconv_cpu(x, w, s, 2), plain(relu_dwconv_reference)(x, w, s, 2))
    for kind in ("max", "avg"):
        same(cpu.pool2d_cpu(x, kind, 3, s), plain(pool2d_reference)(x, kind, 3, s))
w = torch.randn(20, 3, 1, 1)  # natfast's own GEMM (no BLAS), portable build
same(cpu.conv1x1_bn_cpu(x, w, (1, 1), 1e-5, True), plain(conv1x1_bn_reference)(x, w, (1, 1), 1e-5, True))
for shape, stride in (((2, 3, 12, 10), 1), ((2, 3, 13, 11), 1), ((2, 3, 13, 11), 2)):  # Winograd, direct, direct
    x, w = torch.randn(shape), torch.randn(5, 3, 3, 3)
    same(cpu.relu_conv_bn_cpu(x, w, stride, (1, 1), 1e-5), plain(relu_conv_bn_reference)(x, w, stride, (1, 1), 1e-5))
parts, w = [torch.randn(2, 3, 12, 10), torch.randn(2, 2, 12, 10)], torch.randn(4, 5, 1, 1)
with torch.no_grad():
    same(cpu.factorized_reduce_bn_cpu(parts, w, w, (1, 1), 1e-5),
         plain(factorized_reduce_bn_reference)(parts, w, w, (1, 1), 1e-5))
x = torch.randn(2, 6, 12, 10)  # a scoring kernel: depthwise and pointwise per sample, BN sums
dws, pws = [torch.randn(6, 1, 5, 5) for _ in "ab"], [torch.randn(6, 6, 1, 1) for _ in "ab"]
with torch.no_grad():
    for s in (1, 2):
        same(cpu.sep_conv_bn_cpu(x, dws[0], pws[0], dws[1], pws[1], s, (1, 1), 1e-5),
             plain(sep_conv_bn_reference)(x, dws[0], pws[0], dws[1], pws[1], s, (1, 1), 1e-5))
from natfast.ops.fused import cat_conv1x1_bn_each_reference, dil_conv_bn_reference
parts, ws = [torch.randn(2, 3, 12, 10), torch.randn(2, 2, 12, 10)], [torch.randn(4, 5, 1, 1) for _ in "ab"]
x, dw, pw = torch.randn(2, 6, 13, 11), torch.randn(6, 1, 3, 3), torch.randn(5, 6, 1, 1)
with torch.no_grad():
    for fast, ref in zip(cpu.cat_conv1x1_bn_each_cpu(parts, ws, (1, 1), 1e-5, True),
                         plain(cat_conv1x1_bn_each_reference)(parts, ws, (1, 1), 1e-5, True)):
        same(fast, ref)
    for s in (1, 2):
        same(cpu.dil_conv_bn_cpu(x, dw, pw, s, 2, (1, 1), 1e-5), plain(dil_conv_bn_reference)(x, dw, pw, s, 2, (1, 1), 1e-5))
# Backward through each kernel that has one: the same outputs and gradients as plain PyTorch's.
x = torch.randn(4, 3, 13, 11)
cases = [(lambda x, w: cpu.relu_dwconv_cpu(x, w, 2, 1), lambda x, w: relu_dwconv_reference(x, w, 2, 1), (3, 1, 3, 3)),
         (lambda x, w: cpu.relu_dwconv_cpu(x, w, 1, 2), lambda x, w: relu_dwconv_reference(x, w, 1, 2), (3, 1, 5, 5)),
         (lambda x, w: cpu.conv1x1_bn_cpu(x, w, (1, 3), 1e-5, True),
          lambda x, w: conv1x1_bn_reference(x, w, (1, 3), 1e-5, True), (20, 3, 1, 1)),
         (lambda x, w: cpu.group_batch_norm_cpu(x * w, (2, 2), 1e-5),
          lambda x, w: group_batch_norm_reference(x * w, (2, 2), 1e-5), (1, 3, 1, 1))]
for kind in ("max", "avg"):
    cases.append((lambda x, w, k=kind: cpu.pool2d_cpu(x * w, k, 3, 2),
                  lambda x, w, k=kind: pool2d_reference(x * w, k, 3, 2), (1, 3, 1, 1)))
cases.append((lambda x, w: torch.ops.natfast.cpu_relu_conv3x3_winograd(x[:, :, :12, :10], w),
              lambda x, w: relu_conv2d_reference(x[:, :, :12, :10], w, 1), (5, 3, 3, 3)))
from natfast.ops.fused import cat_conv1x1_bn_reference, pool_bn_reference
cases.append((lambda x, w: cpu.pool_bn_cpu(x * w, "max", 3, 2, (1, 3), 1e-5),
              lambda x, w: pool_bn_reference(x * w, "max", 3, 2, (1, 3), 1e-5), (1, 3, 1, 1)))
cases.append((lambda x, w: cpu.cat_conv1x1_bn_cpu([x[:, :2], x[:, 2:]], w, (2, 2), 1e-5, True),
              lambda x, w: cat_conv1x1_bn_reference([x[:, :2], x[:, 2:]], w, (2, 2), 1e-5, True), (7, 3, 1, 1)))
for fast, ref, w_shape in cases:
    w = torch.randn(w_shape)
    g = torch.randn_like(plain(ref)(x, w))
    results = []
    for fn in (fast, plain(ref)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xi, wi)
        results.append((y.detach(), *torch.autograd.grad(y, (xi, wi), g)))
    for a, b in zip(*results):
        same(a, b)
# The executor on this build's kernels against the Python path on plain PyTorch, forward and backward.
from natfast import executor
from natfast.genotype import NAMED, get_family
from natfast.supernet import Supernet
genotype, family = NAMED["DARTS"]
net = Supernet(get_family(family), channels=4, layers=3)
x = torch.randn(2, 3, 8, 8)
assert executor.runs_cpu_kernels(x)
results = []
for run in (executor.compile_arch(net, genotype).run, plain(lambda inp: net(inp, genotype))):
    xi = x.clone().requires_grad_()
    y = run(xi)
    results.append((y.detach(), *torch.autograd.grad(y.square().sum(), [xi, *net.parameters()], allow_unused=True)))
for a, b in zip(*results):
    assert (a is None) == (b is None)
    if a is not None:
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4 * max(1.0, b.abs().max().item()))
print(torch.ops.natfast.cpu_capability(), "ok")
"""


@needs_kernels
@pytest.mark.parametrize("capability", ["vec128", "portable"])
def test_kernels_without_avx2_in_float32(capability):
    # The instruction set is chosen once per process: check the 128-bit build (NEON on ARM, SSE on
    # x86) and the one-value-at-a-time build in fresh ones, natfast's GEMM included (no BLAS).
    env = dict(os.environ, NATFAST_CPU_CAPABILITY=capability, NATFAST_CPU_BLAS="0")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", _PORTABLE_CHECK], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    # Every GCC or clang build has the 128-bit kernels, so the cap is what runs.
    assert f"{capability} ok" in result.stdout


def _train(backend: str, steps: int = 3):
    """Losses and final weights of a few SGD steps of a small supernet on two architectures at once
    (per-group BN statistics), all ops of the DARTS space present."""
    torch.manual_seed(0)
    net = Supernet(get_family("darts"), channels=8, layers=3)
    gen = torch.Generator().manual_seed(1)
    archs = [sample_genotype(net.family, gen) for _ in range(2)]
    x = torch.randn(8, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (8,), generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with dispatch.use_backend(backend):
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net.forward_routed(x, archs, (4, 4)), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return torch.tensor(losses), torch.cat([p.detach().flatten() for p in net.parameters()])


@needs_kernels
def test_training_trajectory_matches_reference():
    fast_losses, fast_weights = _train("auto")
    ref_losses, ref_weights = _train("reference")
    torch.testing.assert_close(fast_losses, ref_losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_weights, ref_weights, rtol=1e-3, atol=1e-4)


@needs_kernels
def test_bench_ops_reports_fast_reference_and_sgemm():
    result = bench_ops(repeats=1, batch=2, groups=["group_batch_norm"])
    assert result["sgemm_gflops"] > 0
    rows = result["group_batch_norm"]
    assert len(rows) == 6
    for row in rows.values():
        assert row["fast_ms"] > 0 and row["reference_ms"] > 0 and row["fast_gflops"] > 0


@needs_kernels
def test_bench_ops_scoring_times_conv_3x3_fused_and_unfused():
    result = bench_ops(repeats=1, batch=2, groups=["scoring"])["scoring"]
    for name in ("conv_3x3 s1 C20 H32", "conv_3x3 s1 C80 H8", "conv_3x3 s2 C40 H32"):
        row = result[name]
        assert row["fast_ms"] > 0 and row["unfused_fast_ms"] > 0 and row["reference_ms"] > 0
    # The fused kernel where it is measured faster, the unfused ops elsewhere (C = 80, stride 2).
    assert result["conv_3x3 s1 C80 H8"]["fast_backends"]["relu_conv_bn"] == ["cpu"]
    assert result["conv_3x3 s2 C80 H16"]["fast_backends"]["relu_conv_bn"] == ["reference"]


@pytest.mark.parametrize("c_in,c_out,k,stride,h", [(8, 8, 3, 1, 9), (20, 20, 5, 2, 10), (24, 16, 1, 2, 7), (6, 6, 3, 1, 1)])
def test_relu_conv2d_channels_last_matches_reference(c_in, c_out, k, stride, h):
    """The CPU backend's dense conv (channels-last oneDNN, plain torch) vs the reference, fwd + bwd."""
    from natfast.ops.conv import relu_conv2d, relu_conv2d_reference
    torch.manual_seed(0)
    x = torch.randn(3, c_in, h, h + 2)[:, :, :, 1:-1].requires_grad_()     # non-contiguous
    w = torch.randn(c_out, c_in, k, k, requires_grad=True)
    g = torch.randn(3, c_out, (h - 1) // stride + 1, (h - 1) // stride + 1)
    y = relu_conv2d(x, w, stride)
    assert y.is_contiguous()
    gx, gw = torch.autograd.grad(y, (x, w), g)
    with dispatch.use_backend("reference"):
        y_ref = relu_conv2d_reference(x, w, stride)
        rx, rw = torch.autograd.grad(y_ref, (x, w), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("groups", [None, "three"])
@pytest.mark.parametrize("blas", ["1", "0", ""])  # the BLAS, natfast's own GEMM kernel, the automatic choice
def test_conv1x1_bn_equals_reference(dtype, relu_input, groups, blas, monkeypatch):
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    gen = torch.Generator().manual_seed(11)
    # (C_in, C_out, H, W): planes narrower than a vector, odd sizes, more outputs than inputs,
    # more than one panel of columns and a tail, and the preprocessing's 4C -> C.
    # Batch 37: several samples per chunk of the weight gradient's partial sums, the last one short.
    # (5, 50, 13, 7, 11): the GEMM's 3-vector blocks (rows 4+3+3+3), then 2- and 1-vector and scalar
    # columns, both ways.
    for n, c_in, c_out, h, w in [(6, 5, 7, 3, 3), (6, 13, 6, 9, 7), (6, 8, 20, 5, 6), (6, 32, 8, 4, 9), (37, 6, 5, 4, 3),
                                 (5, 50, 13, 7, 11)]:
        x = _random((n, c_in, h, w), dtype, gen) + 0.2
        weight = _random((c_out, c_in, 1, 1), dtype, gen)
        sizes = None if groups is None else (n - 3, 1, 2)
        ref_fn = lambda a, b: conv1x1_bn_reference(a, b, sizes, 1e-5, relu_input)
        with dispatch.use_backend("reference"):
            g = _random((n, c_out, h, w), dtype, gen)
            ref = _run(ref_fn, [x, weight], g)
        fast = _run(lambda a, b: cpu_backend.conv1x1_bn_cpu(a, b, sizes, 1e-5, relu_input), [x, weight], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_conv1x1_bn_non_contiguous_and_batch_of_one(layout):
    gen = torch.Generator().manual_seed(12)
    for n in (1, 3):
        x = _random((n, 6, 7, 5), torch.float32, gen)
        weight = _random((4, 6, 1, 1), torch.float32, gen)
        g = _random((n, 4, 7, 5), torch.float32, gen)
        with dispatch.use_backend("reference"):
            ref = _run(lambda a, b: conv1x1_bn_reference(_layout(a, layout), b, None, 1e-5, True), [x, weight], g)
        fast = _run(lambda a, b: cpu_backend.conv1x1_bn_cpu(_layout(a, layout), b, None, 1e-5, True), [x, weight], g)
        _assert_same(fast, ref, torch.float32)


@needs_kernels
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_conv1x1_bn_gradcheck_and_deterministic_weight_gradient(blas, monkeypatch):
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    threaded = getattr(_ext.load()[0], "cpu_kernels_threaded", lambda: True)()
    if blas == "1" and not threaded:
        pytest.skip("kernels built without OpenMP: the forced BLAS threads itself (csrc/cpu/gemm.h)")
    gen = torch.Generator().manual_seed(13)
    x = (_random((3, 4, 5, 3), torch.float64, gen) + 0.1).requires_grad_()
    w = _random((5, 4, 1, 1), torch.float64, gen).requires_grad_()
    for relu_input in (False, True):
        assert torch.autograd.gradcheck(lambda a, b: cpu_backend.conv1x1_bn_cpu(a, b, (1, 2), 1e-5, relu_input), (x, w))
    x32, w32 = _random((16, 12, 8, 8), torch.float32, gen), _random((10, 12, 1, 1), torch.float32, gen)
    g = _random((16, 10, 8, 8), torch.float32, gen)
    y, rstd = torch.ops.natfast.cpu_conv1x1_bn_forward([x32], w32, [], 1e-5, True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.natfast.cpu_conv1x1_bn_backward(g, [x32], w32, y, rstd, [], True)[1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@needs_kernels
def test_conv1x1_bn_bad_input_is_a_clear_error():
    from natfast.ops.fused import conv1x1_bn
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="weight"):
        conv1x1_bn(x, torch.randn(5, 4, 1, 1))
    with pytest.raises(ValueError, match="add up"):
        conv1x1_bn(x, torch.randn(5, 3, 1, 1), groups=(1, 2))
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.natfast.cpu_conv1x1_bn_forward([x], torch.randn(5, 4, 1, 1), [], 1e-5, False)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_cat_conv1x1_bn_reads_parts_in_place_equals_reference(dtype, relu_input, blas, monkeypatch):
    """A cell output's nodes fed to the preprocessing without concatenating them: forward and every
    part's gradient equal the reference (which concatenates), with per-group BN statistics."""
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    gen = torch.Generator().manual_seed(14)
    # Parts of unequal widths (a part narrower than a vector), one part, a non-contiguous part;
    # batch 37 spreads the weight gradient's chunks unevenly.
    # (Views are read in place by the forward: FactorizedReduce's pixel subsamples are tested below.)
    for n, widths, c_out, h, w in [(6, (4, 4, 4, 4), 4, 5, 6), (6, (3, 1, 7), 9, 4, 3), (37, (5,), 6, 3, 4),
                                   (5, (2, 6), 3, 8, 8)]:
        parts = [_random((n, c, h, w), dtype, gen) + 0.2 for c in widths]
        parts[-1] = _layout(parts[-1], "strided")
        weight = _random((c_out, sum(widths), 1, 1), dtype, gen)
        sizes = (n - 3, 1, 2)
        g = _random((n, c_out, h, w), dtype, gen)
        with dispatch.use_backend("reference"):
            ref = _run(lambda b, *ps: cat_conv1x1_bn_reference(ps, b, sizes, 1e-5, relu_input), [weight, *parts], g)
        assert dispatch.resolve("cat_conv1x1_bn", "cpu", parts, weight, sizes, 1e-5, relu_input)[0] == "cpu"
        fast = _run(lambda b, *ps: cpu_backend.cat_conv1x1_bn_cpu(ps, b, sizes, 1e-5, relu_input), [weight, *parts], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu_input", [False, True])
def test_cat_conv1x1_bn_reads_pixel_subsamples_in_place(dtype, relu_input):
    """FactorizedReduce's inputs: stride-2 pixel subsamples of the nodes (even and odd phase, one
    part a channels-last tensor, one wider than a vector's row, rows of whole vectors up to the
    tensor's last value), read in place by the forward; forward and gradients equal the reference."""
    gen = torch.Generator().manual_seed(16)
    for n, widths, c_out, h, w, phase in [(5, (4, 3), 6, 16, 16, 0), (4, (2, 5, 3), 4, 9, 34, 1), (4, (6,), 5, 2, 2, 1),
                                          (3, (3, 2), 4, 6, 32, 1), (3, (3,), 4, 4, 32, 0)]:
        nodes = [_random((n, c, h, w), dtype, gen) + 0.2 for c in widths]
        nodes[0] = _layout(nodes[0], "channels_last")
        parts = [x[:, :, phase::2, phase::2] for x in nodes]
        assert not parts[-1].is_contiguous()
        weight = _random((c_out, sum(widths), 1, 1), dtype, gen)
        sizes = (n - 2, 2)
        g = _random((n, c_out) + tuple(parts[0].shape[2:]), dtype, gen)
        with dispatch.use_backend("reference"):
            ref = _run(lambda b, *xs: cat_conv1x1_bn_reference([x[:, :, phase::2, phase::2] for x in xs], b, sizes, 1e-5,
                                                               relu_input), [weight, *nodes], g)
        fast = _run(lambda b, *xs: cpu_backend.cat_conv1x1_bn_cpu([x[:, :, phase::2, phase::2] for x in xs], b, sizes,
                                                                   1e-5, relu_input), [weight, *nodes], g)
        _assert_same(fast, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_cat_conv1x1_bn_each_equals_one_call_per_weight(dtype, relu_input, blas, monkeypatch):
    """The two cells that preprocess one cell output, in one pass over it (scoring): each weight's
    output equals the reference's, for parts of unequal widths (one a strided view), per-group
    statistics and weights of different widths."""
    from natfast.ops.fused import cat_conv1x1_bn_each
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    gen = torch.Generator().manual_seed(19)
    for n, widths, c_outs, h, w, sizes in [(6, (4, 4, 4, 4), (4, 4), 5, 6, (3, 1, 2)), (5, (3, 1, 7), (9, 2, 5), 8, 7, None),
                                          (4, (30,), (20, 40), 5, 5, (2, 2))]:
        parts = [_random((n, c, h, w), dtype, gen) + 0.2 for c in widths]
        parts[-1] = _layout(parts[-1], "strided")
        weights = [_random((c, sum(widths), 1, 1), dtype, gen) for c in c_outs]
        with dispatch.use_backend("reference"):
            expected = [cat_conv1x1_bn_reference(parts, wt, sizes, 1e-5, relu_input) for wt in weights]
        with torch.inference_mode(), dispatch.recording() as used:
            got = cat_conv1x1_bn_each(parts, weights, sizes, 1e-5, relu_input)
        assert used["cat_conv1x1_bn_each"] == {"cpu"}
        assert len(got) == len(weights)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, **TOL[dtype])


@needs_kernels
def test_cat_conv1x1_bn_each_under_autograd_is_one_call_per_weight():
    """The kernel is forward only: under autograd the reference runs and gradients flow."""
    from natfast.ops.fused import cat_conv1x1_bn, cat_conv1x1_bn_each
    gen = torch.Generator().manual_seed(20)
    parts = [_random((4, 3, 5, 5), torch.float32, gen).requires_grad_() for _ in range(2)]
    weights = [_random((c, 6, 1, 1), torch.float32, gen).requires_grad_() for c in (4, 5)]
    with dispatch.recording() as used:
        ys = cat_conv1x1_bn_each(parts, weights, (1, 3), relu_input=True)
    assert used["cat_conv1x1_bn_each"] == {"reference"}
    sum(y.sum() * (i + 1) for i, y in enumerate(ys)).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in parts + weights)
    with torch.no_grad():
        for y, wt in zip(ys, weights):
            torch.testing.assert_close(y, cat_conv1x1_bn(parts, wt, (1, 3), relu_input=True), **TOL[torch.float32])


@needs_kernels
def test_cat_conv1x1_bn_each_bad_input_is_a_clear_error():
    from natfast.ops.fused import cat_conv1x1_bn_each
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="at least one weight"):
        cat_conv1x1_bn_each([a, b], [])
    with pytest.raises(ValueError, match=r"\(C_out, 5, 1, 1\) weight for parts of 5"):
        cat_conv1x1_bn_each([a, b], [torch.randn(5, 5, 1, 1), torch.randn(5, 4, 1, 1)])
    with pytest.raises(ValueError, match="share batch, height and width"):
        cat_conv1x1_bn_each([a, torch.randn(2, 2, 4, 5)], [torch.randn(5, 5, 1, 1)])
    with pytest.raises(ValueError, match="add up"):
        cat_conv1x1_bn_each([a, b], [torch.randn(5, 5, 1, 1)], groups=(1, 2))
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.natfast.cpu_conv1x1_bn_forward_each([a, b], [torch.randn(5, 5, 1, 1), torch.randn(5, 4, 1, 1)], [],
                                                      1e-5, False)


@needs_kernels
def test_cat_conv1x1_bn_gradcheck_float64():
    gen = torch.Generator().manual_seed(15)
    parts = [(_random((3, c, 4, 3), torch.float64, gen) + 0.1).requires_grad_() for c in (2, 3)]
    w = _random((4, 5, 1, 1), torch.float64, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda b, p, q: cpu_backend.cat_conv1x1_bn_cpu([p, q], b, (1, 2), 1e-5, True),
                                    (w, *parts))


@needs_kernels
def test_cat_conv1x1_bn_bad_input_is_a_clear_error():
    from natfast.ops.fused import cat_conv1x1_bn
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\(C_out, 5, 1, 1\) weight"):
        cat_conv1x1_bn([a, b], torch.randn(5, 4, 1, 1))
    with pytest.raises(ValueError, match="share batch, height and width"):
        cat_conv1x1_bn([a, torch.randn(2, 2, 4, 5)], torch.randn(5, 5, 1, 1))
    with pytest.raises(ValueError, match="one or more"):
        cat_conv1x1_bn([], torch.randn(5, 5, 1, 1))
    with pytest.raises(RuntimeError, match="must share batch, height, width and dtype"):
        torch.ops.natfast.cpu_conv1x1_bn_forward([a, b.double()], torch.randn(5, 5, 1, 1), [], 1e-5, False)
    with pytest.raises(RuntimeError, match="at least one input part"):
        torch.ops.natfast.cpu_conv1x1_bn_forward([], torch.randn(5, 5, 1, 1), [], 1e-5, False)


# ----------------------------------------------------------------- scoring: dil_conv_bn, sep_conv_bn
def _dwconv_pointwise_inputs(n, c, c_out, k, h, w, dtype, gen):
    x = _random((n, c, h, w), dtype, gen) + 0.2
    return x, _random((c, 1, k, k), dtype, gen), _random((c_out, c, 1, 1), dtype, gen)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_dil_conv_bn_scoring_equals_reference(dtype, kernel, stride, dilation, blas, monkeypatch):
    """Forward only (nothing recorded): the one-pass kernel equals the reference, with per-group
    statistics, odd sizes, more outputs than inputs, a plane narrower than a vector, batch 1."""
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    from natfast.ops.fused import dil_conv_bn, dil_conv_bn_reference
    gen = torch.Generator().manual_seed(16)
    for n, c, c_out, h, w, sizes in [(6, 5, 7, 9, 7, (3, 1, 2)), (4, 8, 8, 16, 13, None), (1, 3, 2, 6, 5, None),
                                     (5, 4, 6, 3, 3, (2, 3))]:
        x, dw, pw = _dwconv_pointwise_inputs(n, c, c_out, kernel, h, w, dtype, gen)
        with dispatch.use_backend("reference"):
            expected = dil_conv_bn_reference(x, dw, pw, stride, dilation, sizes)
        with torch.inference_mode(), dispatch.recording() as used:
            got = dil_conv_bn(x, dw, pw, stride, dilation, sizes)
        assert used["dil_conv_bn"] == {"cpu"}
        torch.testing.assert_close(got, expected, **TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_sep_conv_bn_scoring_equals_reference(dtype, kernel, stride, blas, monkeypatch):
    """The second half applies the first half's normalisation as it reads each plane: the result
    equals the reference and, exactly, the unfused CPU kernels (the same arithmetic in the same
    order)."""
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    from natfast.ops.fused import sep_conv_bn, sep_conv_bn_reference
    gen = torch.Generator().manual_seed(17)
    for n, c, c_out, h, w, sizes in [(6, 5, 7, 9, 7, (3, 1, 2)), (4, 8, 8, 16, 13, None), (2, 3, 4, 5, 6, (1, 1))]:
        x, dw1, pw1 = _dwconv_pointwise_inputs(n, c, c, kernel, h, w, dtype, gen)
        dw2, pw2 = _random((c, 1, kernel, kernel), dtype, gen), _random((c_out, c, 1, 1), dtype, gen)
        args = (x, dw1, pw1, dw2, pw2, stride, sizes)
        with dispatch.use_backend("reference"):
            expected = sep_conv_bn_reference(*args)
        with torch.inference_mode():
            with dispatch.recording() as used:
                got = sep_conv_bn(*args)
            assert used["sep_conv_bn"] == {"cpu"}
            with dispatch.use_backend("cpu", sep_conv_bn="reference", dil_conv_bn="reference"):
                unfused = sep_conv_bn(*args)
        torch.testing.assert_close(got, expected, **TOL[dtype])
        assert torch.equal(got, unfused)


@needs_kernels
def test_scoring_ops_leave_autograd_to_the_unfused_kernels():
    """Under autograd the forward-only kernel declines, so gradients flow as before; the modules take
    the scoring path only when nothing is recorded, with the same output."""
    from natfast.ops.layers import DilConv, SepConv
    gen = torch.Generator().manual_seed(18)
    x = _random((4, 6, 8, 8), torch.float32, gen)
    for module in (SepConv(6, 6, 3, 1, affine=False, track=False), DilConv(6, 8, 5, 2, 2, affine=False, track=False)):
        with dispatch.recording() as training:
            y = module(x, (1, 3))
        y.sum().backward()
        assert all(p.grad is not None for p in module.parameters())
        # The fused op's reference (the unfused ops, each on its CPU kernel), never the scoring kernel.
        assert all(training.get(op, {"reference"}) == {"reference"} for op in ("sep_conv_bn", "dil_conv_bn"))
        assert training["relu_dwconv"] == {"cpu"} and training["conv1x1_bn"] == {"cpu"}
        with torch.no_grad(), dispatch.recording() as scoring:
            scored = module(x, (1, 3))
        assert scoring.get("sep_conv_bn", scoring.get("dil_conv_bn")) == {"cpu"}
        assert torch.equal(scored, y.detach())


@needs_kernels
def test_scoring_ops_bad_input_is_a_clear_error():
    from natfast.ops.fused import dil_conv_bn, sep_conv_bn
    x = torch.randn(2, 3, 6, 6)
    dw, pw = torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1)
    with pytest.raises(ValueError, match=r"\(C, 1, k, k\) depthwise weight"):
        dil_conv_bn(x, torch.randn(4, 1, 3, 3), pw)
    with pytest.raises(ValueError, match=r"\(C_out, 3, 1, 1\) pointwise weight"):
        dil_conv_bn(x, dw, torch.randn(4, 5, 1, 1))
    with pytest.raises(ValueError, match="add up"):
        dil_conv_bn(x, dw, pw, groups=(1, 2))
    with pytest.raises(ValueError, match="keeps the 3 channels"):
        sep_conv_bn(x, dw, pw, dw, pw)
    with pytest.raises(RuntimeError, match="give both in_scale and in_shift"):
        torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(x, torch.ones(1, 3, dtype=torch.float64), None, dw, pw, 1, 1,
                                                         [], 1e-5, True)
    with pytest.raises(RuntimeError, match=r"float64 \(groups, C\)"):
        torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(x, torch.ones(2, 3), torch.ones(2, 3), dw, pw, 1, 1,
                                                         [1, 1], 1e-5, True)
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        torch.ops.natfast.cpu_dwconv_pointwise_bn_forward(x, None, None, dw, pw, 3, 1, [], 1e-5, True)


# ----------------------------------------------------------------- scoring: factorized_reduce_bn
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("blas", ["1", "0", ""])
def test_factorized_reduce_bn_scoring_equals_reference(dtype, blas, monkeypatch):
    """Both halves in one pass: exactly the two unfused CPU calls and their concatenation (the same
    arithmetic), and plain PyTorch within tolerance; one part or a cell output's nodes, per-group
    statistics, planes down to 1 x 1 after the stride."""
    monkeypatch.setenv("NATFAST_CPU_BLAS", blas)
    from natfast.ops.fused import factorized_reduce_bn, factorized_reduce_bn_reference
    gen = torch.Generator().manual_seed(21)
    for n, channels, c_out, h, w, sizes in [(6, (5,), 8, 10, 8, (3, 1, 2)), (4, (3, 3, 3, 3), 6, 16, 16, None),
                                            (3, (2, 4), 4, 2, 2, None)]:
        parts = [_random((n, c, h, w), dtype, gen) for c in channels]
        wa, wb = (_random((c_out // 2, sum(channels), 1, 1), dtype, gen) for _ in range(2))
        with dispatch.use_backend("reference"):
            expected = factorized_reduce_bn_reference(parts, wa, wb, sizes)
        with torch.inference_mode():
            with dispatch.recording() as used:
                got = factorized_reduce_bn(parts, wa, wb, sizes)
            assert used["factorized_reduce_bn"] == {"cpu"}
            unfused = factorized_reduce_bn_reference(parts, wa, wb, sizes)
        torch.testing.assert_close(got, expected, **TOL[dtype])
        assert torch.equal(got, unfused)


@needs_kernels
def test_factorized_reduce_leaves_autograd_to_the_unfused_kernels():
    from natfast.ops.layers import FactorizedReduce
    gen = torch.Generator().manual_seed(22)
    module = FactorizedReduce(6, 8, affine=False, track=False)
    parts = [_random((4, 3, 8, 8), torch.float32, gen) for _ in range(2)]
    with dispatch.recording() as training:
        y = module.forward_parts(parts, (1, 3))
    y.sum().backward()
    assert module.conv_a.grad is not None and module.conv_b.grad is not None
    assert training["factorized_reduce_bn"] == {"reference"} and training["cat_conv1x1_bn"] == {"cpu"}
    with torch.no_grad(), dispatch.recording() as scoring:
        scored = module.forward_parts(parts, (1, 3))
    assert scoring["factorized_reduce_bn"] == {"cpu"}
    assert torch.equal(scored, y.detach())


@needs_kernels
def test_factorized_reduce_bn_bad_input_is_a_clear_error():
    from natfast.ops.fused import factorized_reduce_bn
    x, w = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 1, 1)
    with pytest.raises(ValueError, match="even heights and widths"):
        factorized_reduce_bn([torch.randn(2, 3, 7, 6)], w, w)
    with pytest.raises(ValueError, match=r"\(C_out, 3, 1, 1\) weight"):
        factorized_reduce_bn([x], w, torch.randn(2, 4, 1, 1))
    with pytest.raises(RuntimeError, match="same shapes and dtype"):
        torch.ops.natfast.cpu_factorized_reduce_bn_forward([x[:, :, ::2, ::2]], [x[:, :, 1::2, 1::3]], w, w, [], 1e-5,
                                                           True)


# ----------------------------------------------------------------- training: conv_3x3 by Winograd
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_conv2d_winograd_equals_reference_forward_and_backward(dtype):
    """k = 3, stride 1, even sizes: Winograd's F(2x2, 3x3) forward and input gradient (the weight
    flipped and transposed), oneDNN's weight gradient; more outputs than inputs and fewer, blocks
    of tiles spanning samples, a 2 x 4 plane, a non-contiguous input, both oneDNN layouts (C <= 32
    channels-last, above NCHW)."""
    from natfast.ops.conv import relu_conv2d, relu_conv2d_reference
    gen = torch.Generator().manual_seed(21)
    for n, c, c_out, h, w in [(3, 5, 7, 8, 6), (2, 20, 20, 32, 32), (2, 40, 24, 16, 16), (1, 3, 2, 2, 4)]:
        x = _random((n, c, h, w + 2), dtype, gen)[:, :, :, 1:-1].requires_grad_()
        weight = _random((c_out, c, 3, 3), dtype, gen).requires_grad_()
        g = _random((n, c_out, h, w), dtype, gen)
        # Winograd's rule takes float32 (the backend's relu_conv2d serves float32 only); the kernel
        # itself also runs float64, called directly here.
        assert cpu_backend._winograd_fits(x, weight, 1) == (dtype == torch.float32)
        y = (cpu_backend.relu_conv2d_cpu(x, weight, 1) if dtype == torch.float32
             else torch.ops.natfast.cpu_relu_conv3x3_winograd(x, weight))
        gx, gw = torch.autograd.grad(y, (x, weight), g)
        ref = relu_conv2d_reference(x, weight, 1)
        rx, rw = torch.autograd.grad(ref, (x, weight), g)
        torch.testing.assert_close(y, ref, **TOL[dtype])
        torch.testing.assert_close(gx, rx, **TOL[dtype])
        torch.testing.assert_close(gw, rw, rtol=TOL[dtype]["rtol"], atol=10 * TOL[dtype]["atol"])
        if dtype == torch.float32:  # the dispatched op takes it at every width
            with dispatch.recording() as used:
                relu_conv2d(x, weight, 1)
            assert used["relu_conv2d"] == {"cpu"}
    x = _random((2, 3, 4, 6), torch.float64, gen).requires_grad_()
    weight = _random((4, 3, 3, 3), torch.float64, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.natfast.cpu_relu_conv3x3_winograd(a, b), (x, weight))


@needs_kernels
def test_relu_conv2d_winograd_declines_what_it_cannot_do_and_bad_input_is_a_clear_error():
    x, weight = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    assert cpu_backend._winograd_fits(x, weight, 1)
    assert not cpu_backend._winograd_fits(x, weight, 2)
    assert not cpu_backend._winograd_fits(x[:, :, :7], weight, 1)
    assert not cpu_backend._winograd_fits(x, torch.randn(4, 3, 5, 5), 1)
    with pytest.raises(RuntimeError, match="height and width must be even"):
        torch.ops.natfast.cpu_conv3x3_winograd(x[:, :, :7].contiguous(), weight, True)
    with pytest.raises(RuntimeError, match=r"weight must be \(C_out, 3, 3, 3\)"):
        torch.ops.natfast.cpu_conv3x3_winograd(x, torch.randn(4, 2, 3, 3), True)
    with pytest.raises(RuntimeError, match="differs from the input's"):
        torch.ops.natfast.cpu_conv3x3_winograd(x, weight.double(), True)


# ----------------------------------------------------------------- scoring: relu_conv_bn (conv_kxk)
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,stride", [(1, 2), (3, 1), (3, 2), (5, 1), (5, 2), (7, 2)])
def test_relu_conv_bn_scoring_equals_reference(dtype, kernel, stride):
    """Forward only: the kernel equals plain PyTorch, with per-group statistics, odd sizes, planes
    narrower than the window or a vector, more outputs than inputs, batch 1, and a plane wide
    enough that the direct GEMM goes in several chunks of columns. With k = 3, stride 1 and even
    sizes the kernel takes Winograd's F(2x2, 3x3): rows of tiles narrower than a vector, blocks of
    tiles spanning several samples, and several blocks per sample (40 channels at 32x32)."""
    from natfast.ops.fused import relu_conv_bn, relu_conv_bn_reference
    gen = torch.Generator().manual_seed(19)
    for n, c, c_out, h, w, sizes in [(6, 5, 7, 9, 7, (3, 1, 2)), (4, 8, 8, 16, 13, None), (1, 3, 2, 6, 5, None),
                                     (5, 4, 6, 3, 2, (2, 3)), (2, 3, 4, 40, 50, None), (3, 6, 5, 8, 10, (1, 2)),
                                     (2, 40, 24, 32, 32, (1, 1))]:
        x = _random((n, c, h, w), dtype, gen)
        weight = _random((c_out, c, kernel, kernel), dtype, gen)
        with dispatch.use_backend("reference"):
            expected = relu_conv_bn_reference(x, weight, stride, sizes)
        with torch.inference_mode():
            got = cpu_backend.relu_conv_bn_cpu(x, weight, stride, sizes, EPS)  # whether or not dispatch picks it
            with dispatch.recording() as used:
                dispatched = relu_conv_bn(x, weight, stride, sizes)
        torch.testing.assert_close(got, expected, **TOL[dtype])
        torch.testing.assert_close(dispatched, expected, **TOL[dtype])
        if c <= 32:
            assert used["relu_conv_bn"] == {"cpu"}


@needs_kernels
def test_relu_conv_bn_serves_scoring_where_it_is_faster():
    """Under autograd the module runs the unfused ops (with their backward); scoring takes the fused
    kernel where it was measured faster (Winograd's case at any width, the direct GEMM up to 32
    input channels) and the unfused ops elsewhere."""
    from natfast.ops.layers import ReLUConvBN
    gen = torch.Generator().manual_seed(20)
    for c, stride, size, expected_backend in ((6, 2, 8, "cpu"), (40, 1, 8, "cpu"), (40, 2, 8, "reference"),
                                              (40, 1, 7, "reference")):
        module = ReLUConvBN(c, c, 3, stride, affine=False, track=False)
        x = _random((4, c, size, size), torch.float32, gen)
        with dispatch.recording() as training:
            y = module(x, (1, 3))
        y.sum().backward()
        assert module.weight.grad is not None and training["relu_conv_bn"] == {"reference"}
        with torch.no_grad(), dispatch.recording() as scoring:
            scored = module(x, (1, 3))
        assert scoring["relu_conv_bn"] == {expected_backend}
        torch.testing.assert_close(scored, y.detach(), **TOL[torch.float32])


@needs_kernels
def test_relu_conv_bn_bad_input_is_a_clear_error():
    from natfast.ops.fused import relu_conv_bn
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"\(C_out, C, k, k\) weight with k odd"):
        relu_conv_bn(x, torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(C_out, C, k, k\) weight with k odd"):
        relu_conv_bn(x, torch.randn(4, 5, 3, 3))
    with pytest.raises(ValueError, match="add up"):
        relu_conv_bn(x, torch.randn(4, 3, 3, 3), groups=(1, 2))
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        torch.ops.natfast.cpu_relu_conv_bn_forward(x, torch.randn(4, 3, 3, 3), 3, [], 1e-5)
    with pytest.raises(RuntimeError, match="differs from the input's"):
        torch.ops.natfast.cpu_relu_conv_bn_forward(x, torch.randn(4, 3, 3, 3).double(), 1, [], 1e-5)
    with pytest.raises(RuntimeError, match=r"weight must be \(C_out, 3, k, k\)"):
        torch.ops.natfast.cpu_relu_conv_bn_forward(x, torch.randn(4, 2, 3, 3), 1, [], 1e-5)
