"""FactorizedReduce: two fused halves against the unfused way, in one process.

    python bench/factorized_reduce.py [--repeats 9]

The supernet's FactorizedReduce runs as the concatenation of two `cat_conv1x1_bn` calls (one per
pixel phase; BN normalises each channel on its own). The baseline is how it ran before: a ReLU of
each node's phase, their concatenation, two 1x1 convolutions, a concatenation and the BN, each on
natfast's fast kernels. Prints, per shape, the median ms of both under inference mode and with a
backward, measured in turns.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from natfast.benchmarks import interleaved_median_ms
from natfast.ops.layers import FactorizedReduce
from natfast.ops.pointwise import conv1x1

# (nodes, C per node, H): a reduction cell's pre0 of a 4-node cell output at the first two stages,
# and a skip on a reduction edge (one input).
SHAPES = ((4, 20, 32), (4, 40, 16), (1, 20, 32), (1, 40, 32))


def unfused(module: FactorizedReduce, parts, groups=None) -> torch.Tensor:
    wa, wb = module.conv_a, module.conv_b
    even = torch.cat([F.relu(p[:, :, ::2, ::2]) for p in parts], dim=1)
    odd = torch.cat([F.relu(p[:, :, 1::2, 1::2]) for p in parts], dim=1)
    return module.norm(torch.cat([conv1x1(even, wa), conv1x1(odd, wb)], dim=1), groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
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
        ms = interleaved_median_ms({"fused scoring": scoring(fused), "unfused scoring": scoring(unfused),
                                    "fused fwd+bwd": training(fused), "unfused fwd+bwd": training(unfused)},
                                   args.repeats, warmup=2)
        print(f"{nodes} x C{c} H{h} -> {2 * c}: scoring {ms['fused scoring']:.2f} vs {ms['unfused scoring']:.2f} ms "
              f"(x{ms['unfused scoring'] / ms['fused scoring']:.2f}), fwd+bwd {ms['fused fwd+bwd']:.2f} vs "
              f"{ms['unfused fwd+bwd']:.2f} ms (x{ms['unfused fwd+bwd'] / ms['fused fwd+bwd']:.2f})")


if __name__ == "__main__":
    main()
