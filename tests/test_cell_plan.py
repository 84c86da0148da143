"""The one description of a sampled cell (natfast/cell_plan.py): strides, liveness, outputs, known
zeros, repeated edges, and the op catalogue that the C++ executor shares."""
import pytest
import torch

from natfast import cell_plan, executor
from natfast.cell_plan import KINDS, OP_SPECS, plan_cell, plan_network, spec
from natfast.genotype import Genotype, get_family, get_named, normalize
from natfast.ops.layers import make_op

DARTS = get_family("darts")
ENAS = get_family("enas")


def test_strides_follow_the_reduction_rule():
    beta, _ = get_named("DARTS")
    normal = cell_plan.plan_of(beta, DARTS, reduction=False)
    reduce = cell_plan.plan_of(beta, DARTS, reduction=True)
    assert {s.stride for s in normal.slots} == {1}
    assert [s.stride for s in reduce.slots] == [2 if s.source < 2 else 1 for s in reduce.slots]


def test_null_edges_and_dead_nodes_do_not_run():
    # Node 4 feeds nothing and is not in the concat: it and its edges are dead; null edges never run.
    edges = (("sep_conv_3x3", 0, 2), ("null", 1, 2), ("skip_connect", 2, 3), ("max_pool_3x3", 0, 3),
             ("conv_3x3", 1, 4), ("sep_conv_5x5", 0, 4), ("skip_connect", 3, 5), ("null", 1, 5))
    plan = plan_cell(edges, (2, 3, 5), DARTS, False)
    assert plan.outputs == (2, 3, 5) and 4 not in plan.live and 1 not in plan.live
    assert [s.index for s in plan.slots if s.live] == [0, 2, 3, 6]
    assert not plan.needs_input(1) and plan.needs_input(0)
    assert plan.into(5) == (plan.slots[6],)


def test_loose_end_outputs_are_the_unread_nodes():
    beta, family = get_named("ENAS")
    plan = cell_plan.plan_of(beta, ENAS, reduction=False)
    read = {f for _, f, _ in beta.normal}
    assert plan.outputs == tuple(n for n in range(2, 7) if n not in read)


def test_known_zeros_propagate_through_cells_and_repeated_edges_run_once():
    cell = (("null", 0, 2), ("null", 1, 2), ("skip_connect", 2, 3), ("max_pool_3x3", 2, 3),
            ("sep_conv_3x3", 1, 4), ("sep_conv_3x3", 1, 4), ("dil_conv_3x3", 0, 5), ("skip_connect", 3, 5))
    g = normalize(Genotype(normal=cell, normal_concat=(2, 3, 4, 5), reduce=cell, reduce_concat=(2, 3, 4, 5)))
    network = plan_network(g, DARTS, 3)
    first = network.cells[0]
    # Node 2 has only null edges: zero; node 3 reads only node 2: zero; node 5 still reads input 0.
    assert {2, 3} <= first.zero and 4 not in first.zero and 5 not in first.zero
    assert first.output_blocks == (2, 3)
    assert first.reuse == {5: 4}  # the second sep_conv_3x3 1 -> 4 repeats the first
    second = network.cells[1]
    assert second.input_used == (True, True) and second.input_blocks == (None, (2, 3))
    assert network.classifier_blocks == network.cells[2].output_blocks


def test_a_cell_whose_outputs_are_all_zero_leaves_the_next_input_unused():
    dead = (("null", 0, 2), ("null", 1, 2), ("null", 0, 3), ("null", 1, 3), ("null", 0, 4), ("null", 1, 4),
            ("null", 0, 5), ("null", 1, 5))
    g = normalize(Genotype(normal=dead, normal_concat=(2, 3, 4, 5), reduce=dead, reduce_concat=(2, 3, 4, 5)))
    network = plan_network(g, DARTS, 3)
    assert all(run.output_blocks == () for run in network.cells)
    assert network.cells[2].input_used == (False, False)


@pytest.mark.parametrize("op", sorted(OP_SPECS))
def test_the_catalogue_counts_each_module_s_weights(op):
    """`OpSpec.weights` is what the executor reads per op: the module's parameter count, at both strides."""
    if op == "null":
        assert spec(op).weights(1) == 0
        return
    for stride in (1, 2):
        module = make_op(op, 4, stride, affine=False, pool_bn=True, track=False)
        assert spec(op).weights(stride) == len(list(module.parameters())), (op, stride)


def test_the_executor_shares_the_op_kinds():
    if not executor.available():
        pytest.skip("the compiled executor is not built")
    assert tuple(torch.ops.natfast.executor_kinds()) == KINDS


def test_unknown_ops_are_named():
    with pytest.raises(ValueError, match="unknown operation 'sep_conv_9x9'"):
        spec("sep_conv_9x9")
