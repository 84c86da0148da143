"""Parameters and multiply-adds of the standalone network of a genotype.

MAdds are counted by torch's FlopCounterMode on one forward pass of a single image through the
reference path (convolutions and the classifier; MAdds = FLOPs / 2), so they follow exactly what
the network executes: null edges and dead nodes cost nothing. Parameters exclude the auxiliary head,
as the DARTS and NAT papers count them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .genotype import Family, Genotype
from .network import Network
from .ops.dispatch import use_backend


@dataclass
class Cost:
    params: int
    madds: int

    def __str__(self) -> str:
        return f"params {self.params / 1e6:.3f}M, MAdds {self.madds / 1e6:.1f}M"


def count(genotype: Genotype, family: Family, channels: int = 36, layers: int = 20,
          num_classes: int = 10, image_size: int = 32) -> Cost:
    """Cost of the evaluation network (DARTS CIFAR-10 protocol by default: 20 cells, C = 36)."""
    net = Network(genotype, family, channels, layers, num_classes, auxiliary=False).eval()
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 3, image_size, image_size)
    with use_backend("reference"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return Cost(params, counter.get_total_flops() // 2)
