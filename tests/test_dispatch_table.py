"""The measured dispatch table: rules from measurements, size thresholds, forcing wins."""
import pytest
import torch

from natfast.ops import dispatch, dispatch_table, pool2d
from natfast.ops.dispatch_table import Rule


def test_rules_order_backends_by_time_and_merge_equal_neighbours():
    measured = [(1, {"triton": 2.0, "reference": 1.0}), (4, {"triton": 3.0, "reference": 1.5}),
                (16, {"triton": 1.0, "reference": 2.0}), (64, {"cuda": 0.5, "triton": 0.7})]
    rules = dispatch_table.rules_from(measured, lambda b: b * 10)
    assert rules == [Rule(40, ("reference", "triton")), Rule(160, ("triton", "reference")),
                     Rule(float("inf"), ("cuda", "triton", "reference"))]


@pytest.fixture
def restore_pool2d_rules():
    saved = dict(dispatch_table.TABLE)
    yield
    dispatch_table.TABLE.clear()
    dispatch_table.TABLE.update(saved)


def test_table_picks_the_backend_by_size_and_forcing_still_wins(restore_pool2d_rules):
    if "cpu" not in dispatch.registered("pool2d"):
        pytest.skip("the C++ CPU kernels are not built")
    small, large = torch.randn(2, 3, 4, 4), torch.randn(4, 3, 8, 8)
    assert dispatch.resolve("pool2d", "cpu", small, "max", 3, 1)[0] == "cpu"  # DEFAULT_PREFERENCE
    dispatch_table.set_rules("pool2d", "cpu", [Rule(float("inf"), ("cpu", "reference")),
                                               Rule(small.numel(), ("reference", "cpu"))])
    assert dispatch.resolve("pool2d", "cpu", small, "max", 3, 1)[0] == "reference"
    assert dispatch.resolve("pool2d", "cpu", large, "max", 3, 1)[0] == "cpu"
    with dispatch.use_backend("auto", pool2d="cpu"):
        assert dispatch.resolve("pool2d", "cpu", small, "max", 3, 1)[0] == "cpu"
    with dispatch.recording() as used:  # the public op goes through the same choice
        torch.testing.assert_close(pool2d(small, "max", 3, 1), dispatch.call("pool2d", small, "max", 3, 1))
    assert used["pool2d"] == {"reference"}
    dispatch_table.set_rules("pool2d", "cpu", [])
    assert ("cpu", "pool2d") not in dispatch_table.TABLE
    assert dispatch.resolve("pool2d", "cpu", small, "max", 3, 1)[0] == "cpu"


def test_shipped_rules_name_known_backends_and_measured_ops():
    for (device_type, op), rules in dispatch_table.TABLE.items():
        assert device_type in ("cpu", "cuda") and op in dispatch_table.SIZE_OF
        assert rules and rules[-1].max_size == float("inf")
        assert [r.max_size for r in rules] == sorted(r.max_size for r in rules)
        for rule in rules:
            assert "reference" in rule.order and set(rule.order) <= set(dispatch.KNOWN_BACKENDS)


def test_environment_variable_forces_backends_and_names_unknown_ones(monkeypatch):
    if "cpu" not in dispatch.registered("pool2d"):
        pytest.skip("the C++ CPU kernels are not built")
    x = torch.randn(2, 3, 4, 4)
    monkeypatch.setenv("NATFAST_BACKEND", "pool2d=reference")
    assert dispatch.resolve("pool2d", "cpu", x, "max", 3, 1)[0] == "reference"
    monkeypatch.setenv("NATFAST_BACKEND", "auto")  # a changed value is read again (parses are cached)
    assert dispatch.resolve("pool2d", "cpu", x, "max", 3, 1)[0] == "cpu"
    monkeypatch.setenv("NATFAST_BACKEND", "pool2d=tpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        dispatch.resolve("pool2d", "cpu", x, "max", 3, 1)
