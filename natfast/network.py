"""The standalone network of one genotype, for training from scratch (DARTS evaluation network).

It uses the same operation modules as the supernet. With `affine=False, pool_bn=True,
track_running_stats=False` it computes exactly what the supernet's sampled path computes, which
`network_from_supernet` uses (and the tests check).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cell_plan import edge_key, plan_cell, reduction_layers
from .genotype import Family, Genotype
from .ops.layers import FactorizedReduce, Identity, ReLUConvBN, make_op
from .inputs import check_images
from .supernet import Stem


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability drop_prob (DARTS' regulariser)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class Cell(nn.Module):
    """One cell of the standalone network, run as its plan (natfast/cell_plan.py) says."""

    def __init__(self, edges, concat, family: Family, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, affine: bool, pool_bn: bool, track: bool):
        super().__init__()
        self.plan = plan_cell(tuple(tuple(e) for e in edges), tuple(concat or ()), family, reduction)
        self.edges = [(s.op, s.source, s.target) for s in self.plan.slots]
        self.reduction, self.channels = reduction, c
        self.outputs = self.plan.outputs
        self.pre0 = FactorizedReduce(c_pp, c, affine, track) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, affine, track)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, affine, track)
        # Every non-null edge owns a module (dead ones too, so the parameters and checkpoints do not
        # depend on liveness); only the plan's live slots run.
        self.ops = nn.ModuleDict({str(s.index): make_op(s.op, c, s.stride, affine, pool_bn, track)
                                  for s in self.plan.slots if s.op != "null"})

    @property
    def out_channels(self) -> int:
        return len(self.outputs) * self.channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        plan = self.plan
        n, _, h, w = s1.shape
        if self.reduction:
            h, w = (h + 1) // 2, (w + 1) // 2
        states = {0: self.pre0(s0) if plan.needs_input(0) else None, 1: self.pre1(s1) if plan.needs_input(1) else None}
        for t in range(2, plan.num_nodes + 2):
            if t not in plan.live:
                continue
            total = None
            for slot in plan.into(t):
                module = self.ops[str(slot.index)]
                y = module(states[slot.source])
                if drop_prob > 0 and self.training and not isinstance(module, Identity):  # as DARTS
                    y = drop_path(y, drop_prob)
                total = y if total is None else total + y
            states[t] = total if total is not None else s1.new_zeros(n, self.channels, h, w)
        return torch.cat([states[s] for s in self.outputs], dim=1)


class ImageNetStem(nn.Module):
    """DARTS' ImageNet stem (NetworkImageNet): three stride-2 3x3 convolutions, 224 -> 28. Returns
    the inputs of the first cell: after the second convolution (s0) and after the third (s1)."""

    def __init__(self, c: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


class AuxiliaryHeadImageNet(nn.Module):
    """The auxiliary classifier of DARTS' (and the NAT authors') NetworkImageNet, on the 7x7 map
    after the second reduction (224 input): no BN after its 2x2 convolution (as DARTS trained it)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < 7:
            raise ValueError(f"the ImageNet auxiliary head needs a feature map of at least 7x7 after the second "
                             f"reduction (images of 224 pixels or more), got {x.shape[2]}x{x.shape[3]}; train "
                             f"without it (--auxiliary-weight 0) or with larger images")
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier on the 8x8 feature map."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


STEMS = ("cifar", "imagenet")


class Network(nn.Module):
    """DARTS' evaluation network: NetworkCIFAR (`stem="cifar"`: one 3x3 convolution, stride 1) or
    NetworkImageNet (`stem="imagenet"`: three stride-2 convolutions, the first cell reducing its
    first input as after a reduction)."""

    def __init__(self, genotype: Genotype, family: Family, channels: int = 36, layers: int = 20,
                 num_classes: int = 10, auxiliary: bool = False, drop_path_prob: float = 0.0,
                 affine: bool = True, pool_bn: bool = False, track_running_stats: bool = True,
                 stem_multiplier: int = 3, stem: str = "cifar"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        self.genotype, self.family = genotype, family
        self.drop_path_prob = drop_path_prob
        if stem == "imagenet":
            self.stem = ImageNetStem(channels)
            c_pp, c_p, c, reduction_prev = channels, channels, channels, True
        else:
            c_stem = stem_multiplier * channels
            self.stem = Stem(c_stem, affine, track_running_stats)
            c_pp, c_p, c, reduction_prev = c_stem, c_stem, channels, False
        self.cells = nn.ModuleList()
        reductions = reduction_layers(layers)
        self.aux_after = 2 * layers // 3
        self.aux_head = None
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c *= 2
            edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            cell = Cell(edges, concat, family, c_pp, c_p, c, reduction, reduction_prev, affine, pool_bn, track_running_stats)
            self.cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
            if auxiliary and i == self.aux_after:
                self.aux_head = (AuxiliaryHeadImageNet if stem == "imagenet" else AuxiliaryHead)(c_p, num_classes)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward_with_aux(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_images(x, self.classifier.weight)
        s0, s1 = self.stem(x) if isinstance(self.stem, ImageNetStem) else (self.stem(x),) * 2
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        return self.classifier(s1.mean(dim=(2, 3))), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


def network_from_supernet(supernet, genotype: Genotype) -> Network:
    """The standalone network of `genotype` holding the supernet's shared weights: it computes
    the same function as `supernet(x, genotype)` (affine-free BN with batch statistics)."""
    net = Network(genotype, supernet.family, supernet.channels, supernet.layers,
                  supernet.classifier.out_features, affine=False, pool_bn=True, track_running_stats=False,
                  stem_multiplier=supernet.stem.conv.out_channels // supernet.channels)
    net = net.to(supernet.classifier.weight.device)
    with torch.no_grad():
        net.stem.load_state_dict(supernet.stem.state_dict())
        prev_blocks: Sequence[Optional[Tuple[int, ...]]] = [None, None]
        for cell, scell in zip(net.cells, supernet.cells):
            for name, blocks in (("pre0", prev_blocks[0]), ("pre1", prev_blocks[1])):
                for pname, p in getattr(cell, name).named_parameters():
                    full = dict(getattr(scell, name).named_parameters())[pname]
                    p.copy_(full if blocks is None else full.index_select(1, _block_index(blocks, full.shape[1] // scell.num_nodes, full.device)))
            for j, (op, f, t) in enumerate(cell.edges):
                if op != "null":
                    cell.ops[str(j)].load_state_dict(scell.edges[edge_key(f, t)][op].state_dict())
            prev_blocks = [prev_blocks[1], tuple(s - 2 for s in cell.outputs)]
        w = supernet.classifier.weight
        net.classifier.weight.copy_(w.index_select(1, _block_index(prev_blocks[1], supernet.cells[-1].channels, w.device)))
        net.classifier.bias.copy_(supernet.classifier.bias)
    return net


def _block_index(blocks, c_block: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(b * c_block, (b + 1) * c_block) for b in blocks]).to(device)
