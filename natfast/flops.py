"""Parameters and multiply-adds of the standalone network of a genotype.

MAdds are counted by torch's FlopCounterMode on one forward pass of a single image through the
reference path (MAdds = FLOPs / 2), on the meta device (shapes only, nothing computed). Two
conventions:

* "executed" (natfast's default): what the network executes. Convolutions and the classifier;
  null edges, dead nodes (nodes that reach no output) and unused cell inputs cost nothing.
* "authors": what the NAT authors' counting code (NATv2 utils.compute_flops) gives for their
  evaluation network: every convolution module, including those on dead nodes and the
  preprocessing of an input only null edges read (their network computes every node); BN, pools
  and the classifier are not counted (their check for nn.Linear tests the wrong variable).

Parameters exclude the auxiliary head, as the DARTS and NAT papers (and the authors'
compute_nparam(model, "auxiliary")) count them; both conventions give the same parameters.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from .genotype import Family, Genotype
from .network import Network
from .ops.dispatch import use_backend

CONVENTIONS = ("executed", "authors")
# Evaluation settings per dataset: DARTS' CIFAR-10 network (20 cells, C = 36) and its ImageNet
# mobile setting (14 cells, C = 48, 224 x 224).
DATASETS = {
    "cifar10": dict(channels=36, layers=20, num_classes=10, image_size=32, stem="cifar"),
    "imagenet": dict(channels=48, layers=14, num_classes=1000, image_size=224, stem="imagenet"),
}


@dataclass
class Cost:
    params: int
    madds: int

    def __str__(self) -> str:
        return f"params {self.params / 1e6:.3f}M, MAdds {self.madds / 1e6:.1f}M"


@contextlib.contextmanager
def _every_node_computed(net: Network) -> Iterator[None]:
    """Each cell computes all its nodes and both inputs, as the authors' evaluation cell does: its
    plan, for the duration, has every node live and every non-null edge running."""
    saved = [cell.plan for cell in net.cells]
    try:
        for cell, plan in zip(net.cells, saved):
            slots = tuple(dataclasses.replace(s, live=s.op != "null") for s in plan.slots)
            cell.plan = dataclasses.replace(plan, slots=slots, live=frozenset(range(plan.num_nodes + 2)))
        yield
    finally:
        for cell, plan in zip(net.cells, saved):
            cell.plan = plan


def count(genotype: Genotype, family: Family, channels: Optional[int] = None, layers: Optional[int] = None,
          num_classes: Optional[int] = None, image_size: Optional[int] = None, madds: str = "executed",
          dataset: str = "cifar10") -> Cost:
    """Cost of the evaluation network of `dataset` ("cifar10": 20 cells, C = 36, 32 x 32;
    "imagenet": 14 cells, C = 48, 224 x 224, 1000 classes; any size given overrides), MAdds by the
    `madds` convention ("executed" or "authors", see the module docstring)."""
    if madds not in CONVENTIONS:
        raise ValueError(f"MAdds convention must be one of {', '.join(CONVENTIONS)}, got {madds!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    given = dict(channels=channels, layers=layers, num_classes=num_classes, image_size=image_size)
    size = {**DATASETS[dataset], **{k: v for k, v in given.items() if v is not None}}
    with torch.device("meta"):
        net = Network(genotype, family, size["channels"], size["layers"], size["num_classes"],
                      auxiliary=False, stem=size["stem"]).eval()
        x = torch.empty(1, 3, size["image_size"], size["image_size"])
    params = sum(p.numel() for p in net.parameters())
    every_node = _every_node_computed(net) if madds == "authors" else contextlib.nullcontext()
    with every_node, use_backend("reference"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    if madds == "authors":
        flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    else:
        flops = counter.get_total_flops()
    return Cost(params, flops // 2)
