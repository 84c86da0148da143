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
