"""`natfast bench factorized-reduce` (also `python bench/factorized_reduce.py`): FactorizedReduce's
two fused halves against the unfused way, in one process.

The supernet's FactorizedReduce runs as the concatenation of two `cat_conv1x1_bn` calls (one per
pixel phase; BN normalises each channel on its own). The baseline is the unfused way: a ReLU of
each node's phase, their concatenation, two 1x1 convolutions, a concatenation and the BN, each on
natfast's fast kernels. Returns, per shape, the median ms of both under inference mode and with a
backward, measured in turns, after checking that both compute the same.
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..ops.layers import FactorizedReduce
from ..ops.pointwise import conv1x1
from . import positive_int
from .timing import interleaved_median_ms

# (nodes, C per node, H): a reduction cell's pre0 of a 4-node cell output at the first two stages,
# and a skip on a reduction edge (one input).
SHAPES = ((4, 20, 32), (4, 40, 16), (1, 20, 32), (1, 40, 32))


def unfused(module: FactorizedReduce, parts, groups=None) -> torch.Tensor:
    wa, wb = module.conv_a, module.conv_b
    even = torch.cat([F.relu(p[:, :, ::2, ::2]) for p in parts], dim=1)
    odd = torch.cat([F.relu(p[:, :, 1::2, 1::2]) for p in parts], dim=1)
    return module.norm(torch.cat([conv1x1(even, wa), conv1x1(odd, wb)], dim=1), groups)


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench factorized-reduce",
                                description="FactorizedReduce fused against unfused")
    p.add_argument("--repeats", type=positive_int, default=9)
    p.add_argument("--batch-size", type=positive_int, default=64)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    result: Dict = {"threads": torch.get_num_threads(), "batch": args.batch_size}
    for nodes, c, h in SHAPES:
        module = FactorizedReduce(nodes * c, 2 * c, affine=False, track=False)
        parts = [torch.randn(args.batch_size, c, h, h, requires_grad=True) for _ in range(nodes)]
        grad = torch.randn(args.batch_size, 2 * c, h // 2, h // 2)
        torch.testing.assert_close(module.forward_parts(parts), unfused(module, parts), rtol=1e-4, atol=1e-4)

        def scoring(fn):
            def run():
                with torch.inference_mode():
                    fn(module, parts)
            return run

        def training(fn):
            return lambda: fn(module, parts).backward(grad)

        fused = FactorizedReduce.forward_parts
        ms = interleaved_median_ms({"fused_scoring_ms": scoring(fused), "unfused_scoring_ms": scoring(unfused),
                                    "fused_fwd_bwd_ms": training(fused), "unfused_fwd_bwd_ms": training(unfused)},
                                   args.repeats, warmup=2)
        ms["scoring_speedup"] = round(ms["unfused_scoring_ms"] / ms["fused_scoring_ms"], 2)
        ms["fwd_bwd_speedup"] = round(ms["unfused_fwd_bwd_ms"] / ms["fused_fwd_bwd_ms"], 2)
        result[f"{nodes} x C{c} H{h} -> C{2 * c}"] = ms
    return result
