"""The named architectures: the NAT authors' zoo under their names, and NAONet_B.

Every genotype except NAONet_B is transcribed from the authors' genotypes.py: github.com/guoyongcs/NAT
(DARTS, ENAS, ResBlock, VGG, their NAT_ versions, the random cells R1-R5 and NAT_R1-NAT_R5) and
github.com/guoyongcs/NATv2 (the NATv2_ results of NAT++, Mobilenetv2, NAONet and their
transformations). Names are the authors' (lookups ignore case, so "MobileNetV2" finds Mobilenetv2).
Each architecture's family is the smallest that holds it (`infer_family`): its NAT_ / NATv2_ versions
can be compared with it, drawn and costed; transforming one needs a policy searched on a family
that holds its ops.
"""
from __future__ import annotations

from typing import Dict, Tuple

from .genotype import Genotype, normalize

# DARTS also equals DARTS_V2 of quark0/darts and the spec; NAT_DARTS is the spec's published result.
DARTS = Genotype(
    normal=[("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2), ("sep_conv_3x3", 0, 3), ("sep_conv_3x3", 1, 3),
            ("sep_conv_3x3", 1, 4), ("skip_connect", 0, 4), ("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0, 2), ("max_pool_3x3", 1, 2), ("skip_connect", 2, 3), ("max_pool_3x3", 1, 3),
            ("max_pool_3x3", 0, 4), ("skip_connect", 2, 4), ("skip_connect", 2, 5), ("max_pool_3x3", 1, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_DARTS = Genotype(
    normal=[("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 1, 3),
            ("skip_connect", 1, 4), ("skip_connect", 0, 4), ("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 2, 3), ("skip_connect", 1, 3),
            ("max_pool_3x3", 0, 4), ("null", 2, 4), ("skip_connect", 2, 5), ("max_pool_3x3", 1, 5)],
    reduce_concat=[2, 3, 4, 5])

# The ENAS paper's CIFAR-10 cell as the NAT code writes it (loose-end; node 2 repeats (1, 2) with two
# ops). Some third-party transcriptions have avg_pool_3x3 from node 0 into node 5; the NAT authors
# (and their NAT_ENAS) use node 1, which we keep.
ENAS = Genotype(
    normal=[("sep_conv_3x3", 1, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_5x5", 1, 3),
            ("avg_pool_3x3", 0, 4), ("sep_conv_3x3", 1, 4), ("sep_conv_3x3", 0, 5), ("avg_pool_3x3", 1, 5),
            ("avg_pool_3x3", 0, 6), ("sep_conv_5x5", 1, 6)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_3x3", 1, 3), ("avg_pool_3x3", 1, 3),
            ("avg_pool_3x3", 1, 4), ("sep_conv_3x3", 1, 4), ("avg_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5),
            ("sep_conv_5x5", 0, 6), ("sep_conv_3x3", 5, 6)],
    reduce_concat=[2, 3, 6])

NAT_ENAS = Genotype(
    normal=[("sep_conv_3x3", 1, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_5x5", 1, 3),
            ("null", 0, 4), ("sep_conv_3x3", 1, 4), ("sep_conv_3x3", 0, 5), ("avg_pool_3x3", 1, 5),
            ("avg_pool_3x3", 0, 6), ("sep_conv_5x5", 1, 6)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_3x3", 1, 3), ("avg_pool_3x3", 1, 3),
            ("avg_pool_3x3", 1, 4), ("sep_conv_3x3", 1, 4), ("null", 1, 5), ("sep_conv_5x5", 4, 5),
            ("sep_conv_5x5", 0, 6), ("sep_conv_3x3", 5, 6)],
    reduce_concat=[2, 3, 6])

# Hand-crafted blocks as 4-node fully-concat cells, the NAT authors' encoding. Node 2 passes the
# previous cell's output through (skip from input 1); a node's second input, absent in the original
# block, is a null edge from input 0; the output is node 5 alone (concat [5]).
#   ResBlock: 3 = conv(2), 4 = conv(3), 5 = skip(2) + skip(4): a basic residual block.
#   VGG:      3 = conv(2), 4 = conv(3), 5 = skip(4) (normal) or max_pool(4) (reduce): two plain convs.
# Normal and reduce cells are the same block (VGG's reduce ends in its pooling layer).
_RESBLOCK_CELL = [("null", 0, 2), ("skip_connect", 1, 2), ("null", 0, 3), ("conv_3x3", 2, 3),
                  ("null", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)]
_NAT_RESBLOCK_CELL = [("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
                      ("skip_connect", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)]
_VGG_HEAD = [("null", 0, 2), ("skip_connect", 1, 2), ("null", 0, 3), ("conv_3x3", 2, 3),
             ("null", 0, 4), ("conv_3x3", 3, 4), ("null", 0, 5)]
_NAT_VGG_CELL = [("skip_connect", 0, 2), ("skip_connect", 1, 2), ("null", 0, 3), ("conv_3x3", 2, 3),
                 ("null", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)]

ResBlock = Genotype(normal=_RESBLOCK_CELL, normal_concat=[5], reduce=_RESBLOCK_CELL, reduce_concat=[5])
NAT_ResBlock = Genotype(normal=_NAT_RESBLOCK_CELL, normal_concat=[5],
                        reduce=_NAT_RESBLOCK_CELL, reduce_concat=[5])
VGG = Genotype(normal=_VGG_HEAD + [("skip_connect", 4, 5)], normal_concat=[5],
               reduce=_VGG_HEAD + [("max_pool_3x3", 4, 5)], reduce_concat=[5])
NAT_VGG = Genotype(normal=_NAT_VGG_CELL, normal_concat=[5], reduce=_NAT_VGG_CELL, reduce_concat=[5])

# NAT++ (NATv2) results for the same four inputs.
NATv2_DARTS = Genotype(
    normal=[("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2), ("null", 0, 3), ("skip_connect", 1, 3),
            ("dil_conv_3x3", 1, 4), ("skip_connect", 0, 4), ("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("avg_pool_3x3", 0, 2), ("max_pool_3x3", 1, 2), ("skip_connect", 2, 3), ("skip_connect", 1, 3),
            ("avg_pool_3x3", 0, 4), ("skip_connect", 2, 4), ("skip_connect", 2, 5), ("max_pool_3x3", 1, 5)],
    reduce_concat=[2, 3, 4, 5])

NATv2_ENAS = Genotype(
    normal=[("sep_conv_3x3", 1, 2), ("null", 1, 2), ("skip_connect", 0, 3), ("sep_conv_5x5", 1, 3),
            ("avg_pool_3x3", 0, 4), ("sep_conv_3x3", 1, 4), ("sep_conv_3x3", 0, 5), ("avg_pool_3x3", 1, 5),
            ("skip_connect", 0, 6), ("sep_conv_3x3", 1, 6)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_3x3", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_3x3", 1, 3), ("avg_pool_3x3", 1, 3),
            ("avg_pool_3x3", 1, 4), ("avg_pool_3x3", 1, 4), ("avg_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5),
            ("sep_conv_5x5", 0, 6), ("max_pool_3x3", 5, 6)],
    reduce_concat=[2, 3, 6])

NATv2_ResBlock = Genotype(
    normal=[("skip_connect", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
            ("skip_connect", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)],
    normal_concat=[5],
    reduce=[("skip_connect", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
            ("skip_connect", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)],
    reduce_concat=[5])

NATv2_VGG = Genotype(
    normal=[("skip_connect", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
            ("null", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)],
    normal_concat=[5],
    reduce=[("skip_connect", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
            ("null", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 0, 5), ("max_pool_3x3", 4, 5)],
    reduce_concat=[5])

# Random cells (the NAT paper's R1-R5) and their NAT transformations.
R1 = Genotype(
    normal=[("dil_conv_5x5", 1, 2), ("dil_conv_5x5", 1, 2), ("dil_conv_5x5", 1, 3), ("dil_conv_5x5", 2, 3),
            ("sep_conv_3x3", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 1, 5), ("max_pool_3x3", 0, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 0, 2), ("max_pool_3x3", 0, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 0, 3),
            ("conv_3x3", 0, 4), ("max_pool_3x3", 2, 4), ("avg_pool_3x3", 2, 5), ("conv_3x3", 3, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_R1 = Genotype(
    normal=[("skip_connect", 1, 2), ("dil_conv_5x5", 1, 2), ("null", 1, 3), ("dil_conv_5x5", 2, 3),
            ("sep_conv_3x3", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 1, 5), ("max_pool_3x3", 0, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 0, 2), ("max_pool_3x3", 0, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 0, 3),
            ("skip_connect", 0, 4), ("skip_connect", 2, 4), ("skip_connect", 2, 5), ("conv_3x3", 3, 5)],
    reduce_concat=[2, 3, 4, 5])

R2 = Genotype(
    normal=[("max_pool_3x3", 1, 2), ("dil_conv_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 2, 3),
            ("dil_conv_5x5", 0, 4), ("skip_connect", 3, 4), ("sep_conv_3x3", 1, 5), ("max_pool_3x3", 3, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("conv_3x3", 1, 2), ("avg_pool_3x3", 1, 2), ("max_pool_3x3", 0, 3), ("dil_conv_5x5", 0, 3),
            ("max_pool_3x3", 0, 4), ("skip_connect", 0, 4), ("dil_conv_5x5", 4, 5), ("skip_connect", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_R2 = Genotype(
    normal=[("max_pool_3x3", 1, 2), ("dil_conv_3x3", 0, 2), ("null", 2, 3), ("null", 2, 3),
            ("dil_conv_5x5", 0, 4), ("null", 3, 4), ("sep_conv_3x3", 1, 5), ("max_pool_3x3", 3, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 1, 2), ("avg_pool_3x3", 1, 2), ("skip_connect", 0, 3), ("dil_conv_5x5", 0, 3),
            ("null", 0, 4), ("skip_connect", 0, 4), ("dil_conv_5x5", 4, 5), ("skip_connect", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

R3 = Genotype(
    normal=[("conv_3x3", 0, 2), ("skip_connect", 0, 2), ("conv_3x3", 0, 3), ("max_pool_3x3", 0, 3),
            ("sep_conv_5x5", 1, 4), ("sep_conv_3x3", 3, 4), ("avg_pool_3x3", 4, 5), ("avg_pool_3x3", 4, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 0, 3),
            ("skip_connect", 3, 4), ("max_pool_3x3", 2, 4), ("max_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_R3 = Genotype(
    normal=[("conv_3x3", 0, 2), ("skip_connect", 0, 2), ("null", 0, 3), ("max_pool_3x3", 0, 3),
            ("null", 1, 4), ("null", 3, 4), ("avg_pool_3x3", 4, 5), ("null", 4, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 0, 3),
            ("null", 3, 4), ("skip_connect", 2, 4), ("max_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

R4 = Genotype(
    normal=[("conv_3x3", 1, 2), ("sep_conv_3x3", 1, 2), ("conv_3x3", 2, 3), ("conv_3x3", 2, 3),
            ("sep_conv_3x3", 3, 4), ("conv_3x3", 0, 4), ("max_pool_3x3", 0, 5), ("max_pool_3x3", 4, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0, 2), ("sep_conv_5x5", 1, 2), ("skip_connect", 2, 3), ("sep_conv_3x3", 2, 3),
            ("sep_conv_5x5", 2, 4), ("conv_3x3", 1, 4), ("dil_conv_5x5", 2, 5), ("max_pool_3x3", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_R4 = Genotype(
    normal=[("conv_3x3", 1, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 2, 3), ("null", 2, 3),
            ("sep_conv_3x3", 3, 4), ("conv_3x3", 0, 4), ("max_pool_3x3", 0, 5), ("null", 4, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0, 2), ("sep_conv_5x5", 1, 2), ("skip_connect", 2, 3), ("sep_conv_3x3", 2, 3),
            ("skip_connect", 2, 4), ("conv_3x3", 1, 4), ("null", 2, 5), ("skip_connect", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

R5 = Genotype(
    normal=[("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("max_pool_3x3", 2, 3), ("dil_conv_5x5", 0, 3),
            ("max_pool_3x3", 2, 4), ("conv_3x3", 2, 4), ("conv_3x3", 0, 5), ("sep_conv_5x5", 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("dil_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_5x5", 0, 3), ("avg_pool_3x3", 2, 3),
            ("conv_3x3", 0, 4), ("dil_conv_5x5", 0, 4), ("sep_conv_3x3", 0, 5), ("skip_connect", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

NAT_R5 = Genotype(
    normal=[("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("null", 2, 3), ("dil_conv_5x5", 0, 3),
            ("null", 2, 4), ("conv_3x3", 2, 4), ("conv_3x3", 0, 5), ("sep_conv_5x5", 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("dil_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_5x5", 0, 3), ("avg_pool_3x3", 2, 3),
            ("conv_3x3", 0, 4), ("null", 0, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)],
    reduce_concat=[2, 3, 4, 5])

# MobileNetV2 as the authors encode it in a 4-node cell: 2 = conv_1x1(input 1), 3 = sep_conv_3x3(2),
# 4 = conv_1x1(3), output 5 = skip(1) + skip(4) (normal) or skip(4) (reduce). Not the exact inverted
# residual (no 6x expansion; the sep_conv is DARTS' two-stage one): the authors' cell form of it.
# Their NAT_ and NATv2_ versions are the same genotype.
Mobilenetv2 = Genotype(
    normal=[("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3),
            ("null", 0, 4), ("conv_1x1", 3, 4), ("skip_connect", 1, 5), ("skip_connect", 4, 5)],
    normal_concat=[5],
    reduce=[("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3),
            ("null", 0, 4), ("conv_1x1", 3, 4), ("null", 0, 5), ("skip_connect", 4, 5)],
    reduce_concat=[5])

NAT_MobileNetv2 = Genotype(
    normal=[("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3),
            ("skip_connect", 0, 4), ("conv_1x1", 3, 4), ("skip_connect", 1, 5), ("skip_connect", 4, 5)],
    normal_concat=[5],
    reduce=[("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 2, 3),
            ("null", 0, 4), ("conv_1x1", 3, 4), ("null", 0, 5), ("skip_connect", 4, 5)],
    reduce_concat=[5])

NATv2_MobileNetv2 = Genotype(
    normal=[("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3),
            ("skip_connect", 0, 4), ("conv_1x1", 3, 4), ("skip_connect", 1, 5), ("skip_connect", 4, 5)],
    normal_concat=[5],
    reduce=[("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 2, 3),
            ("null", 0, 4), ("conv_1x1", 3, 4), ("null", 0, 5), ("skip_connect", 4, 5)],
    reduce_concat=[5])

# The authors' NAONet (the NAO paper's NAONet, not weight-sharing): 5 nodes, loose ends
# concatenated, with NAO's 1x3/3x1 and 1x7/7x1 convolutions and 2x2/5x5 pools, so only the -eval
# family holds it (standalone networks; no supernet has those ops). Their NAT_NAONet and
# NATv2_NAONet change ops outside their own transition rules (avg_pool_2x2 -> avg_pool_3x3 in NAT_,
# conv_1x1 -> max/avg_pool_3x3 and conv_1x3_3x1 -> max_pool_3x3 in NATv2_): shipped as published.
NAONet = Genotype(
    normal=[("conv_3x3", 0, 2), ("avg_pool_5x5", 1, 2), ("conv_3x3", 1, 3), ("conv_1x3_3x1", 2, 3),
            ("conv_1x1", 0, 4), ("conv_3x3", 1, 4), ("conv_1x3_3x1", 0, 5), ("conv_3x3", 4, 5),
            ("conv_3x3", 0, 6), ("skip_connect", 1, 6)],
    normal_concat=[3, 5, 6],
    reduce=[("conv_3x3", 0, 2), ("avg_pool_2x2", 1, 2), ("conv_1x1", 0, 3), ("avg_pool_3x3", 0, 3),
            ("max_pool_2x2", 0, 4), ("conv_1x7_7x1", 1, 4), ("avg_pool_3x3", 0, 5), ("conv_1x1", 2, 5),
            ("conv_3x3", 0, 6), ("max_pool_3x3", 1, 6)],
    reduce_concat=[3, 4, 5, 6])

NAT_NAONet = Genotype(
    normal=[("conv_3x3", 0, 2), ("avg_pool_5x5", 1, 2), ("null", 1, 3), ("conv_1x3_3x1", 2, 3),
            ("conv_1x1", 0, 4), ("skip_connect", 1, 4), ("conv_1x3_3x1", 0, 5), ("conv_3x3", 4, 5),
            ("conv_3x3", 0, 6), ("skip_connect", 1, 6)],
    normal_concat=[3, 5, 6],
    reduce=[("null", 0, 2), ("avg_pool_3x3", 1, 2), ("conv_1x1", 0, 3), ("avg_pool_3x3", 0, 3),
            ("skip_connect", 0, 4), ("conv_1x7_7x1", 1, 4), ("avg_pool_3x3", 0, 5), ("skip_connect", 2, 5),
            ("conv_3x3", 0, 6), ("max_pool_3x3", 1, 6)],
    reduce_concat=[3, 4, 5, 6])

NATv2_NAONet = Genotype(
    normal=[("conv_3x3", 0, 2), ("avg_pool_5x5", 1, 2), ("conv_3x3", 1, 3), ("conv_1x3_3x1", 2, 3),
            ("max_pool_3x3", 0, 4), ("conv_3x3", 1, 4), ("max_pool_3x3", 0, 5), ("conv_3x3", 4, 5),
            ("sep_conv_3x3", 0, 6), ("skip_connect", 1, 6)],
    normal_concat=[3, 5, 6],
    reduce=[("conv_3x3", 0, 2), ("skip_connect", 1, 2), ("avg_pool_3x3", 0, 3), ("avg_pool_3x3", 0, 3),
            ("max_pool_2x2", 0, 4), ("conv_1x7_7x1", 1, 4), ("skip_connect", 0, 5), ("skip_connect", 2, 5),
            ("max_pool_3x3", 0, 6), ("max_pool_3x3", 1, 6)],
    reduce_concat=[3, 4, 5, 6])

# NAONet_B: the weight-sharing NAO cell ("NAONet-B", NAO-WS), decoded from the fixed_arc of
# renqianluo/NAO_pytorch NAO_V1/train_NAONet_B_36_cifar10.sh. Its ops are ENAS's (0 sep_conv_3x3,
# 1 sep_conv_5x5, 2 avg_pool_3x3, 3 max_pool_3x3, 4 identity) and NAO concatenates loose ends, so it
# is a 5-node enas cell exactly: unlike the authors' NAONet, a policy searched on enas transforms it.
NAONet_B = Genotype(
    normal=[("sep_conv_5x5", 0, 2), ("avg_pool_3x3", 0, 2), ("sep_conv_5x5", 0, 3), ("avg_pool_3x3", 2, 3),
            ("max_pool_3x3", 1, 4), ("avg_pool_3x3", 0, 4), ("sep_conv_3x3", 4, 5), ("max_pool_3x3", 1, 5),
            ("sep_conv_5x5", 2, 6), ("max_pool_3x3", 0, 6)],
    normal_concat=[3, 5, 6],
    reduce=[("sep_conv_5x5", 1, 2), ("sep_conv_3x3", 1, 2), ("sep_conv_5x5", 2, 3), ("skip_connect", 2, 3),
            ("sep_conv_3x3", 1, 4), ("max_pool_3x3", 2, 4), ("sep_conv_5x5", 3, 5), ("avg_pool_3x3", 2, 5),
            ("avg_pool_3x3", 0, 6), ("avg_pool_3x3", 0, 6)],
    reduce_concat=[4, 5, 6])

# name -> (genotype, family name); the family is what infer_family finds (tests check it).
NAMED: Dict[str, Tuple[Genotype, str]] = {
    name: (normalize(g), family) for name, g, family in (
        ("DARTS", DARTS, "darts"), ("NAT_DARTS", NAT_DARTS, "darts"), ("NATv2_DARTS", NATv2_DARTS, "darts"),
        ("ENAS", ENAS, "enas"), ("NAT_ENAS", NAT_ENAS, "enas"), ("NATv2_ENAS", NATv2_ENAS, "enas"),
        ("ResBlock", ResBlock, "darts"), ("NAT_ResBlock", NAT_ResBlock, "darts"),
        ("NATv2_ResBlock", NATv2_ResBlock, "darts"),
        ("VGG", VGG, "darts"), ("NAT_VGG", NAT_VGG, "darts"), ("NATv2_VGG", NATv2_VGG, "darts"),
        ("R1", R1, "darts"), ("NAT_R1", NAT_R1, "darts"), ("R2", R2, "darts"), ("NAT_R2", NAT_R2, "darts"),
        ("R3", R3, "darts"), ("NAT_R3", NAT_R3, "darts"), ("R4", R4, "darts"), ("NAT_R4", NAT_R4, "darts"),
        ("R5", R5, "darts"), ("NAT_R5", NAT_R5, "darts"),
        ("Mobilenetv2", Mobilenetv2, "darts++"), ("NAT_MobileNetv2", NAT_MobileNetv2, "darts++"),
        ("NATv2_MobileNetv2", NATv2_MobileNetv2, "darts++"),
        ("NAONet", NAONet, "enas-eval"), ("NAT_NAONet", NAT_NAONet, "enas-eval"),
        ("NATv2_NAONet", NATv2_NAONet, "enas-eval"),
        ("NAONet_B", NAONet_B, "enas"),
    )
}

# The authors' published transformations: input -> {"nat": NAT's result, "natpp": NAT++'s}.
TRANSFORMED = {
    "DARTS": {"nat": "NAT_DARTS", "natpp": "NATv2_DARTS"},
    "ENAS": {"nat": "NAT_ENAS", "natpp": "NATv2_ENAS"},
    "ResBlock": {"nat": "NAT_ResBlock", "natpp": "NATv2_ResBlock"},
    "VGG": {"nat": "NAT_VGG", "natpp": "NATv2_VGG"},
    "Mobilenetv2": {"nat": "NAT_MobileNetv2", "natpp": "NATv2_MobileNetv2"},
    "NAONet": {"nat": "NAT_NAONet", "natpp": "NATv2_NAONet"},
    **{f"R{i}": {"nat": f"NAT_R{i}"} for i in range(1, 6)},
}
