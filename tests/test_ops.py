"""Every candidate operation's output shape, stride 1 and 2, in every primitive set."""
import pytest
import torch

from natfast.genotype import DARTS_PRIMITIVES, ENAS_PRIMITIVES, NATPP_PRIMITIVES
from natfast.ops import dispatch, make_op
from natfast.ops.norm import group_batch_norm

ALL_OPS = sorted(set(DARTS_PRIMITIVES + ENAS_PRIMITIVES + NATPP_PRIMITIVES) - {"null"})


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine,pool_bn", [(False, True), (True, False)])
def test_op_output_shape(name, stride, affine, pool_bn):
    torch.manual_seed(0)
    op = make_op(name, 8, stride, affine=affine, pool_bn=pool_bn, track=affine)
    x = torch.randn(3, 8, 10, 10, requires_grad=True)
    y = op(x)
    assert y.shape == (3, 8, 10 // stride, 10 // stride)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_unknown_op_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown operation 'conv_7x7x'"):
        make_op("conv_7x7x", 8, 1, affine=False, pool_bn=True)


def test_group_batch_norm_equals_separate_batch_norms():
    torch.manual_seed(0)
    x = torch.randn(10, 4, 5, 5, dtype=torch.float64)
    for groups in [(5, 5), (3, 7), (2, 2, 6)]:
        y = group_batch_norm(x, groups)
        parts = torch.split(x, list(groups))
        ref = torch.cat([torch.nn.functional.batch_norm(p, None, None, training=True) for p in parts])
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="do not add up"):
        group_batch_norm(x, (3, 3))


def test_forced_reference_backend_is_used():
    calls = []
    dispatch.register("probe_op", "reference", lambda x: calls.append("reference") or x)
    dispatch.register("probe_op", "cpu", lambda x: calls.append("cpu") or x)
    x = torch.randn(2)
    dispatch.call("probe_op", x)
    with dispatch.use_backend("reference"):
        dispatch.call("probe_op", x)
    assert calls == ["cpu", "reference"]
    dispatch._registry.pop("probe_op")


def test_recording_names_the_backend_that_ran():
    dispatch.register("probe_op", "reference", lambda x: x)
    dispatch.register("probe_op", "cpu", lambda x: x,
                      limits=lambda x: None if x.dtype == torch.float32 else f"{x.dtype} (float32 only)")
    try:
        with dispatch.recording() as used:
            dispatch.call("probe_op", torch.randn(2))
            dispatch.call("probe_op", torch.randn(2, dtype=torch.float64))  # automatic: the reference serves
        assert used == {"probe_op": {"cpu", "reference"}}
        dispatch.call("probe_op", torch.randn(2))   # outside the block: not recorded
        assert used == {"probe_op": {"cpu", "reference"}}
    finally:
        dispatch._registry.pop("probe_op")


@pytest.mark.parametrize("force", [dict(name="auto", probe_op="cpu"), dict(name="cpu")])
def test_a_forced_backend_runs_or_fails_naming_why(force):
    """Forcing never falls back silently: a declined call raises with the backend's reason."""
    dispatch.register("probe_op", "reference", lambda x: x * 0)
    dispatch.register("probe_op", "cpu", lambda x: x,
                      limits=lambda x: None if x.dtype == torch.float32 else f"{x.dtype} (float32 only)")
    try:
        x = torch.randn(2)
        with dispatch.use_backend(**force):
            assert torch.equal(dispatch.call("probe_op", x), x)
            with pytest.raises(dispatch.BackendDeclined, match=r"probe_op: the cpu backend is forced .* "
                                                               r"torch.float64 \(float32 only\)"):
                dispatch.call("probe_op", x.double())
    finally:
        dispatch._registry.pop("probe_op")


def test_forcing_a_backend_that_lacks_the_op():
    """Per op: an error naming the backend; globally: the op runs its reference (recorded as such)."""
    dispatch.register("probe_op", "reference", lambda x: x)
    try:
        with dispatch.use_backend("auto", probe_op="triton"):
            with pytest.raises(dispatch.BackendDeclined, match="probe_op: the triton backend is forced .* has no probe_op"):
                dispatch.call("probe_op", torch.randn(2))
        with dispatch.recording() as used, dispatch.use_backend("triton"):
            dispatch.call("probe_op", torch.randn(2))
        assert used == {"probe_op": {"reference"}}
    finally:
        dispatch._registry.pop("probe_op")


def _check_removed_kernel(backend, op, device="cpu"):
    """Forced per op, the call fails naming the backend and the op, whatever the backend's state
    here; forced globally, the op runs its reference, as for any op a backend does not implement."""
    from natfast.ops import pool2d, relu_dwconv
    x = torch.randn(2, 3, 6, 6, device=device)
    run = {"relu_dwconv": lambda: relu_dwconv(x, torch.randn(3, 1, 3, 3, device=device)),
           "pool2d": lambda: pool2d(x, "max"), "group_batch_norm": lambda: group_batch_norm(x)}[op]
    assert backend not in dispatch.registered(op)
    with dispatch.use_backend("auto", **{op: backend}):
        with pytest.raises(dispatch.BackendDeclined, match=rf"{op}: the {backend} backend is forced .* has no {op} "
                                                           rf"here \(the {backend} backend is "):
            run()
    with dispatch.recording() as used, dispatch.use_backend(backend):
        run()
    assert used[op] == {"reference"}


@pytest.mark.parametrize("op", ["relu_dwconv", "pool2d", "group_batch_norm"])
def test_forcing_triton_for_an_op_whose_triton_kernel_was_removed(op):
    """The Triton relu_dwconv, pool2d and group_batch_norm are gone (the graph engine replaces them
    on the GPU)."""
    _check_removed_kernel("triton", op)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU"))])
def test_forcing_cuda_for_relu_dwconv_whose_cuda_kernel_was_removed(device):
    """The CUDA C++ relu_dwconv (csrc/cuda/dwconv.cu) is gone too (it lost to eager at every batch on
    an H100): NATFAST_BACKEND=relu_dwconv=cuda fails clearly, on CPU and CUDA tensors alike."""
    _check_removed_kernel("cuda", "relu_dwconv", device)


def test_scoring_only_and_measured_preferences_are_separate_reasons():
    dispatch.register("probe_op", "reference", lambda x: x)
    dispatch.register("probe_op", "cpu", lambda x: x, scoring_only=True,
                      prefer=lambda x: "too wide" if x.shape[0] > 4 else None)
    try:
        x = torch.randn(2, requires_grad=True)
        assert dispatch.explain("probe_op", "cpu", x) == {
            "reference": None, "cpu": "forward-only kernel (scoring): autograd is recording this call"}
        with torch.no_grad():
            assert dispatch.resolve("probe_op", "cpu", x)[0] == "cpu"
            wide = torch.randn(8)
            assert dispatch.explain("probe_op", "cpu", wide)["cpu"] == "measured slower: too wide"
            assert dispatch.resolve("probe_op", "cpu", wide)[0] == "reference"
            with dispatch.use_backend("auto", probe_op="cpu"):  # forced: preferences do not apply
                assert dispatch.resolve("probe_op", "cpu", wide)[0] == "cpu"
        with dispatch.use_backend("auto", probe_op="cpu"), pytest.raises(dispatch.BackendDeclined, match="scoring"):
            dispatch.call("probe_op", x)
    finally:
        dispatch._registry.pop("probe_op")


@pytest.mark.parametrize("module_kind", ["relu_conv_bn", "factorized_reduce"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_preprocessing_of_node_parts_equals_preprocessing_of_their_concatenation(module_kind, backend):
    """forward_parts (the cell output's nodes read in place) = forward(relu(cat(nodes))), forward and
    backward, with a channel subset (zero nodes dropped) and per-group BN."""
    from natfast.ops.layers import FactorizedReduce, ReLUConvBN
    torch.manual_seed(3)
    c = 4
    module = (ReLUConvBN(3 * c, 6, 1, 1, False, False) if module_kind == "relu_conv_bn"
              else FactorizedReduce(3 * c, 6, False, False))
    index = torch.cat([torch.arange(0, c), torch.arange(2 * c, 3 * c)])   # nodes 0 and 2 of 3
    parts = [torch.randn(5, c, 8, 6, requires_grad=True) for _ in range(2)]
    g = torch.randn(5, 6, *((8, 6) if module_kind == "relu_conv_bn" else (4, 3)))
    with dispatch.use_backend(backend):
        y = module.forward_parts(parts, (2, 3), index)
        grads = torch.autograd.grad(y, [*parts, *module.parameters()], g)
        joined = torch.relu(torch.cat(parts, dim=1))
        y_ref = module(joined, (2, 3), index, relu_applied=True)
        grads_ref = torch.autograd.grad(y_ref, [*parts, *module.parameters()], g)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_declared_limits_describe_each_fast_backend_in_words():
    def limits(x):
        """float32 only."""
        return None if x.dtype == torch.float32 else "not float32"

    def prefer(x):
        """up to 4 values."""
        return None if x.numel() <= 4 else "wide"

    dispatch.register("probe_op", "reference", lambda x: x)
    dispatch.register("probe_op", "cpu", lambda x: x, limits, prefer, scoring_only=True)
    try:
        assert dispatch.declared_limits("probe_op") == {
            "cpu": "float32 only; forward only (scoring: autograd not recording); chosen where measured faster: "
                   "up to 4 values"}
    finally:
        dispatch._registry.pop("probe_op")
    from natfast.info import collect
    assert "odd windows up to 7" in collect()["backend_limits"]["relu_dwconv"]["cpu"]
