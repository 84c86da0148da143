import pytest
import torch

from natfast.genotype import (
    DARTS_PRIMITIVES, ENAS_PRIMITIVES, NAMED, NATPP_PRIMITIVES, GenotypeError, get_named,
)
from natfast.transitions import (
    NATPP_TRANSITIONS, RULES, allowed_targets, check_transformation, is_valid_transformation,
    transition_mask,
)
from natfast.zoo import TRANSFORMED

SKIP, NULL = "skip_connect", "null"
PRIMITIVE_SETS = {"nat": [DARTS_PRIMITIVES, ENAS_PRIMITIVES, NATPP_PRIMITIVES], "natpp": [NATPP_PRIMITIVES]}
CASES = [(rule, prims) for rule, sets in PRIMITIVE_SETS.items() for prims in sets]


# Relative cost of an op at C channels (params; MAdds are the same times H*W), from its layers.
def op_cost(op, c=16):
    if op.startswith("conv_"):
        k = int(op[-1])
        return k * k * c * c                   # dense kxk conv
    if op.startswith("sep_conv_"):
        k = int(op[-1])
        return 2 * (k * k * c + c * c)         # two (depthwise kxk + pointwise 1x1) stages
    if op.startswith("dil_conv_"):
        k = int(op[-1])
        return k * k * c + c * c               # one dilated depthwise kxk + pointwise 1x1
    assert op in (SKIP, NULL) or "pool" in op
    return 0                                   # pools, identity and zero have no weights


def test_cost_order_at_16_channels():
    order = ["conv_5x5", "conv_3x3", "sep_conv_5x5", "sep_conv_3x3", "dil_conv_5x5", "dil_conv_3x3", "conv_1x1"]
    costs = [op_cost(op) for op in order]
    assert costs == sorted(costs, reverse=True) and costs[-1] > op_cost("max_pool_5x5") == op_cost(NULL) == 0


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("rule, prims", CASES)
def test_mask_shape_and_keep_on_the_diagonal(rule, prims):
    mask = transition_mask(prims, rule)
    assert mask.dtype == torch.bool and mask.shape == (len(prims), len(prims))
    assert mask.diagonal().all()
    # Every op can be dropped: replaced by skip or by null.
    assert mask[:, prims.index(SKIP)].all() and mask[:, prims.index(NULL)].all()


@pytest.mark.parametrize("prims", PRIMITIVE_SETS["nat"])
def test_nat_mask_is_exactly_the_rule(prims):
    mask = transition_mask(prims, "nat")
    for i, src in enumerate(prims):
        for j, tgt in enumerate(prims):
            expected = tgt in (SKIP, NULL) if src in (SKIP, NULL) else tgt in (src, SKIP, NULL)
            assert bool(mask[i, j]) == expected, (src, tgt)


def test_natpp_table_covers_the_primitives_and_matches_spec_lines():
    assert set(NATPP_TRANSITIONS) == set(NATPP_PRIMITIVES)
    assert all(set(targets) <= set(NATPP_PRIMITIVES) for targets in NATPP_TRANSITIONS.values())
    assert set(allowed_targets("conv_5x5", "natpp")) == set(NATPP_PRIMITIVES)
    assert set(allowed_targets("conv_1x1", "natpp")) == {"conv_1x1", SKIP, NULL}
    assert set(allowed_targets("sep_conv_3x3", "natpp")) == {
        "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", SKIP, NULL}
    assert set(allowed_targets("max_pool_5x5", "natpp")) == {
        "max_pool_5x5", "avg_pool_5x5", "max_pool_3x3", "avg_pool_3x3", SKIP, NULL}
    assert set(allowed_targets(NULL, "natpp")) == {NULL, SKIP}


@pytest.mark.parametrize("rule, prims", CASES)
def test_target_never_costs_more_than_source(rule, prims):
    mask = transition_mask(prims, rule)
    for i, j in mask.nonzero().tolist():
        assert op_cost(prims[j]) <= op_cost(prims[i]), (prims[i], prims[j])


@pytest.mark.parametrize("rule, prims", CASES)
def test_masked_sampling_never_yields_a_forbidden_op(rule, prims):
    gen = torch.Generator().manual_seed(0)
    mask = transition_mask(prims, rule)
    n = 5000
    src = torch.randint(len(prims), (n,), generator=gen)
    logits = torch.randn(n, len(prims), generator=gen) * 5
    logits = logits.masked_fill(~mask[src], float("-inf"))
    with torch.random.fork_rng():       # Categorical samples from the global RNG; leave it as found
        torch.manual_seed(0)
        tgt = torch.distributions.Categorical(logits=logits).sample()
    assert mask[src, tgt].all()
    # Sampling reaches the allowed targets, not just the kept op.
    assert (tgt != src).any()


def test_allowed_targets_follow_the_primitive_order():
    assert allowed_targets("sep_conv_3x3", "nat", DARTS_PRIMITIVES) == (SKIP, "sep_conv_3x3", NULL)
    assert allowed_targets("sep_conv_3x3", "nat") == ("sep_conv_3x3", SKIP, NULL)
    assert allowed_targets(SKIP, "nat", ENAS_PRIMITIVES) == (SKIP, NULL)
    # natpp over a subset of its ops: targets outside the subset are dropped.
    assert allowed_targets("conv_3x3", "natpp", DARTS_PRIMITIVES) == (
        "max_pool_3x3", "avg_pool_3x3", SKIP, "sep_conv_3x3", "dil_conv_3x3", "conv_3x3", NULL)


# ----------------------------------------------------------------------------- errors
def test_unknown_rule():
    assert RULES == ("nat", "natpp")
    with pytest.raises(ValueError, match="unknown transition rule 'nas'; rules: nat, natpp"):
        transition_mask(DARTS_PRIMITIVES, "nas")
    with pytest.raises(ValueError, match="rules: nat, natpp"):
        allowed_targets("null", "NAT")


def test_natpp_rejects_ops_without_a_transition():
    with pytest.raises(ValueError, match="sep_conv_7x7 have no NAT\\+\\+ transition"):
        transition_mask(NATPP_PRIMITIVES + ("sep_conv_7x7",), "natpp")
    with pytest.raises(ValueError, match="'sep_conv_7x7' has no NAT\\+\\+ transition"):
        allowed_targets("sep_conv_7x7", "natpp")


def test_nat_needs_skip_and_null():
    with pytest.raises(ValueError, match="lack null"):
        transition_mask(("conv_3x3", SKIP), "nat")
    with pytest.raises(ValueError, match="repeat conv_3x3"):
        transition_mask(("conv_3x3", "conv_3x3", SKIP, NULL), "nat")


def test_source_op_outside_the_primitives():
    with pytest.raises(ValueError, match="'conv_5x5' is not among the primitives"):
        allowed_targets("conv_5x5", "nat", DARTS_PRIMITIVES)


# ----------------------------------------------------------------------------- transformations
# The authors' published NAONet transformations change ops their own rules do not allow.
OUTSIDE_THE_RULES = {
    ("NAONet", "nat"): r"avg_pool_2x2 -> avg_pool_3x3 is not an allowed nat transition",
    ("NAONet", "natpp"): r"'conv_1x3_3x1' has no NAT\+\+ transition",
}


@pytest.mark.parametrize("source, rule", [(s, r) for s, results in TRANSFORMED.items() for r in results])
def test_published_results_are_transformations_of_their_inputs(source, rule):
    beta, alpha = NAMED[source][0], NAMED[TRANSFORMED[source][rule]][0]
    assert beta != alpha
    if (source, rule) in OUTSIDE_THE_RULES:
        with pytest.raises(GenotypeError, match=OUTSIDE_THE_RULES[source, rule]):
            check_transformation(beta, alpha, rule)
    else:
        check_transformation(beta, alpha, rule)
        family = NAMED[source][1]
        if rule == "nat":
            check_transformation(beta, alpha, rule, get_named(source)[1].primitives)
        assert family == NAMED[TRANSFORMED[source][rule]][1]


def test_nat_darts_is_a_valid_transformation_of_darts():
    assert is_valid_transformation(NAMED["DARTS"][0], NAMED["NAT_DARTS"][0], "nat", DARTS_PRIMITIVES)


def replace_op(g, cell, index, op):
    edges = list(getattr(g, cell))
    edges[index] = (op,) + edges[index][1:]
    return g._replace(**{cell: tuple(edges)})


def test_forbidden_edge_is_named():
    darts = NAMED["DARTS"][0]
    alpha = replace_op(darts, "reduce", 3, "avg_pool_3x3")
    assert not is_valid_transformation(darts, alpha)
    with pytest.raises(GenotypeError, match=r"reduce cell, edge 3 \(1 -> 3\): max_pool_3x3 -> avg_pool_3x3 "
                                            r"is not an allowed nat transition "
                                            r"\(allowed: max_pool_3x3, skip_connect, null\)"):
        check_transformation(darts, alpha)
    # The same change is a NAT++ transition (3x3 pools may swap).
    check_transformation(darts, alpha, "natpp")


def test_skip_cannot_become_an_op():
    darts = NAMED["DARTS"][0]
    with pytest.raises(GenotypeError, match=r"normal cell, edge 5 \(0 -> 4\): skip_connect -> sep_conv_3x3"):
        check_transformation(darts, replace_op(darts, "normal", 5, "sep_conv_3x3"))


def test_natpp_cheaper_op_is_valid_only_under_natpp():
    res = NAMED["ResBlock"][0]
    alpha = replace_op(res, "normal", 3, "sep_conv_3x3")      # conv_3x3 (2, 3) -> sep_conv_3x3
    assert is_valid_transformation(res, alpha, "natpp", NATPP_PRIMITIVES)
    assert not is_valid_transformation(res, alpha, "nat")
    assert not is_valid_transformation(alpha, res, "natpp")  # back up to the dearer op


def test_connections_must_not_change():
    darts = NAMED["DARTS"][0]
    moved = list(darts.normal)
    moved[7] = ("dil_conv_3x3", 3, 5)
    with pytest.raises(GenotypeError, match=r"normal cell, edge 7: beta connects 2 -> 5 but alpha 3 -> 5"):
        check_transformation(darts, darts._replace(normal=moved))
    with pytest.raises(GenotypeError, match="beta has 8 edges, alpha 7"):
        check_transformation(darts, darts._replace(reduce=darts.reduce[:7]))
    with pytest.raises(GenotypeError, match="normal_concat: beta has .* alpha \\[2, 3\\]"):
        check_transformation(darts, darts._replace(normal_concat=[2, 3]))


def test_op_without_a_natpp_transition_in_beta():
    darts = NAMED["DARTS"][0]
    weird = replace_op(darts, "normal", 0, "sep_conv_7x7")
    with pytest.raises(GenotypeError, match=r"normal cell, edge 0 \(0 -> 2\): op 'sep_conv_7x7' has no NAT\+\+"):
        check_transformation(weird, weird, "natpp")
