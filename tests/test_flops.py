"""Params and MAdds of genotypes."""
from natfast.flops import count
from natfast.genotype import get_named


def test_darts_matches_the_published_size():
    darts, family = get_named("DARTS")
    cost = count(darts, family)
    assert abs(cost.params / 1e6 - 3.35) < 0.05          # DARTS paper: 3.3M (20 cells, C=36)
    assert 450e6 < cost.madds < 650e6


def test_nat_transformation_is_smaller_and_null_costs_nothing():
    darts, family = get_named("DARTS")
    nat, _ = get_named("NAT_DARTS")
    c0, c1 = count(darts, family), count(nat, family)
    assert c1.params < c0.params and c1.madds < c0.madds
    assert abs(c1.params / 1e6 - 2.7) < 0.1               # NAT paper: 2.7M
    all_null = darts._replace(normal=[("null", f, t) for _, f, t in darts.normal])
    c2 = count(all_null, family)
    assert c2.madds < c0.madds / 3
