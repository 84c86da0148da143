"""The input-architecture distribution p(beta) of NAT: for each node, two inputs uniform over the
earlier nodes and two ops uniform over the family's primitives except null."""
from __future__ import annotations

from typing import List

import torch

from .genotype import Family, Genotype


def sample_cell(family: Family, generator: torch.Generator) -> List[tuple]:
    ops = [p for p in family.primitives if p != "null"]
    edges = []
    for t in range(2, family.num_nodes + 2):
        for _ in range(2):
            f = int(torch.randint(t, (1,), generator=generator))
            op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
            edges.append((op, f, t))
    return edges


def default_concat(family: Family) -> List[int]:
    return list(range(2, family.num_nodes + 2))


def sample_genotype(family: Family, generator: torch.Generator) -> Genotype:
    concat = default_concat(family)
    return Genotype(normal=sample_cell(family, generator), normal_concat=concat,
                    reduce=sample_cell(family, generator), reduce_concat=concat)
