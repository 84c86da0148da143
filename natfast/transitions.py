"""NAT and NAT++ transitions: which op an edge of the input architecture beta may become in alpha.

The policy picks one target op per edge; connections never change. Targets a rule forbids are
masked out of the policy's softmax: `logits.masked_fill(~mask[src], -inf)` with `transition_mask`.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence, Tuple

import torch

from .genotype import CELLS, NATPP_PRIMITIVES, Genotype, GenotypeError, normalize

RULES = ("nat", "natpp")
SKIP, NULL = "skip_connect", "null"

# NAT++ (spec section 3): source op -> allowed targets. A target op never costs more than its source
# (on a reduction edge a skip target runs as a FactorizedReduce, which can cost more than a pool).
_POOLS_3 = ("max_pool_3x3", "avg_pool_3x3")
_POOLS_5 = ("max_pool_5x5", "avg_pool_5x5")
_DROP = (SKIP, NULL)
NATPP_TRANSITIONS = {
    "conv_5x5": NATPP_PRIMITIVES,
    "conv_3x3": ("conv_3x3", "conv_1x1", "sep_conv_3x3", "dil_conv_3x3", *_POOLS_3, *_DROP),
    "conv_1x1": ("conv_1x1", *_DROP),
    "sep_conv_5x5": ("sep_conv_5x5", "sep_conv_3x3", "dil_conv_5x5", "dil_conv_3x3", *_POOLS_5, *_POOLS_3, *_DROP),
    "sep_conv_3x3": ("sep_conv_3x3", "dil_conv_3x3", *_POOLS_3, *_DROP),
    "dil_conv_5x5": ("dil_conv_5x5", "dil_conv_3x3", *_POOLS_5, *_POOLS_3, *_DROP),
    "dil_conv_3x3": ("dil_conv_3x3", *_POOLS_3, *_DROP),
    "max_pool_5x5": (*_POOLS_5, *_POOLS_3, *_DROP),
    "avg_pool_5x5": (*_POOLS_5, *_POOLS_3, *_DROP),
    "max_pool_3x3": (*_POOLS_3, *_DROP),
    "avg_pool_3x3": (*_POOLS_3, *_DROP),
    SKIP: _DROP,
    NULL: _DROP,
}


def _nat_targets(src_op: str) -> Tuple[str, ...]:
    """NAT: keep the op or replace it by skip or null; skip and null only swap with each other."""
    return _DROP if src_op in _DROP else (src_op, *_DROP)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown transition rule {rule!r}; rules: {', '.join(RULES)}")


def _check_primitives(primitives: Sequence[str], rule: str) -> None:
    """The primitives a mask is built over must let the rule's targets exist."""
    repeated = sorted(op for op, n in Counter(primitives).items() if n > 1)
    if repeated:
        raise ValueError(f"primitives repeat {', '.join(repeated)}; each op must appear once")
    if rule == "nat":
        missing = [op for op in _DROP if op not in primitives]
        if missing:
            raise ValueError(f"rule 'nat' replaces ops by {SKIP} or {NULL}, but the primitives lack "
                             f"{', '.join(missing)}")
    else:
        foreign = [op for op in primitives if op not in NATPP_TRANSITIONS]
        if foreign:
            raise ValueError(f"op(s) {', '.join(foreign)} have no NAT++ transition; the NAT++ ops are "
                             f"{', '.join(NATPP_PRIMITIVES)}")


def allowed_targets(src_op: str, rule: str = "nat", primitives: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The ops an edge holding `src_op` may become under `rule`, in the order of `primitives`
    (restricted to them); with primitives None, every target the rule allows, in the rule's order."""
    _check_rule(rule)
    if rule == "natpp" and src_op not in NATPP_TRANSITIONS:
        raise ValueError(f"op {src_op!r} has no NAT++ transition; the NAT++ ops are {', '.join(NATPP_PRIMITIVES)}")
    targets = _nat_targets(src_op) if rule == "nat" else NATPP_TRANSITIONS[src_op]
    if primitives is None:
        return tuple(targets)
    if src_op not in primitives:
        raise ValueError(f"op {src_op!r} is not among the primitives ({', '.join(primitives)})")
    return tuple(op for op in primitives if op in targets)


def transition_mask(primitives: Sequence[str], rule: str = "nat") -> torch.Tensor:
    """(P, P) bool tensor, mask[src, tgt] True where `rule` lets primitives[src] become primitives[tgt]."""
    _check_rule(rule)
    prims = tuple(primitives)
    _check_primitives(prims, rule)
    rows = []
    for src in prims:
        allowed = set(allowed_targets(src, rule, prims))
        rows.append([tgt in allowed for tgt in prims])
    return torch.tensor(rows, dtype=torch.bool)


def check_transformation(beta: Genotype, alpha: Genotype, rule: str = "nat",
                         primitives: Optional[Sequence[str]] = None) -> None:
    """Raise GenotypeError unless alpha is beta with only allowed op changes: the same connections
    (from, to) in the same order, the same concat, and every edge's op an allowed target."""
    _check_rule(rule)
    if primitives is not None:
        _check_primitives(tuple(primitives), rule)
    b, a = normalize(beta), normalize(alpha)
    for cell in CELLS:
        src_edges, tgt_edges = getattr(b, cell), getattr(a, cell)
        if len(src_edges) != len(tgt_edges):
            raise GenotypeError(f"{cell} cell: beta has {len(src_edges)} edges, alpha {len(tgt_edges)}; "
                                f"a transformation keeps every connection")
        for i, ((src, f, t), (tgt, f2, t2)) in enumerate(zip(src_edges, tgt_edges)):
            if (f, t) != (f2, t2):
                raise GenotypeError(f"{cell} cell, edge {i}: beta connects {f} -> {t} but alpha "
                                    f"{f2} -> {t2}; a transformation only changes ops")
            try:
                allowed = allowed_targets(src, rule, primitives)
            except ValueError as exc:
                raise GenotypeError(f"{cell} cell, edge {i} ({f} -> {t}): {exc}") from None
            if tgt not in allowed:
                raise GenotypeError(f"{cell} cell, edge {i} ({f} -> {t}): {src} -> {tgt} is not an "
                                    f"allowed {rule} transition (allowed: {', '.join(allowed)})")
        concat = f"{cell}_concat"
        if getattr(b, concat) != getattr(a, concat):
            raise GenotypeError(f"{concat}: beta has {list(getattr(b, concat))}, alpha "
                                f"{list(getattr(a, concat))}; a transformation keeps the outputs")


def is_valid_transformation(beta: Genotype, alpha: Genotype, rule: str = "nat",
                            primitives: Optional[Sequence[str]] = None) -> bool:
    """Whether `check_transformation` accepts alpha as a transformation of beta."""
    try:
        check_transformation(beta, alpha, rule, primitives)
    except GenotypeError:
        return False
    return True
