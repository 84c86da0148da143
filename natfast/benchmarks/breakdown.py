"""`natfast bench breakdown` (also `python bench/derive_breakdown.py`): where the batched derive
pass spends its time, and what writing node sums in place gives.

    natfast bench breakdown [natfast bench derive's workload flags] [--rounds 7]

The workload is `natfast bench derive`'s (the input architecture and K candidates on the same
validation batches). Returns:

- `ops`: every natfast C++ op (`torch.ops.natfast.*`) and the node sums, timed by a wrapper in
  one batched pass on one lane worker (no profiler: its per-op cost distorts ms-long ops), with
  their share of that pass, and for the ops doing most of the arithmetic their GFLOP/s, next to
  `matmul_gflops` (a float32 matmul's, as in `natfast bench derive`); `rest` is what
  no wrapper covers (Python, the classifier, the stem);
- `sums_in_place_ms` / `sums_new_tensor_ms`: the batched pass with `Supernet.SUMS_IN_PLACE` on
  and off, taking turns for `--rounds` rounds (medians), and their ratio.

A CPU tool (on a GPU the wrappers would time kernel launches, not kernels).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List

import torch

from .. import lane_workers
from ..derive import score_architectures
from ..engine import RunContext
from ..supernet import Supernet
from . import positive_int
from .derive import ListLoader, arguments, workload
from .timing import interleaved_median_ms, matmul_gflops


def _conv1x1_flops(parts, weights, *_) -> int:
    """cpu_conv1x1_bn_forward[_each]: the 1x1 convolution of the parts' concatenation by each weight."""
    weights = weights if isinstance(weights, (list, tuple)) else [weights]
    n, _, h, w = parts[0].shape
    return sum(2 * n * h * w * sum(p.shape[1] for p in parts) * wt.shape[0] for wt in weights)


def _dwconv_pointwise_flops(x, _scale, _shift, dw, pw, stride, *_) -> int:
    """cpu_dwconv_pointwise_bn_forward: a k x k depthwise convolution, then a 1x1 one."""
    n, c, h, w = x.shape
    pixels = n * -(-h // stride) * -(-w // stride)
    return 2 * pixels * c * (dw.shape[2] * dw.shape[3] + pw.shape[0])


# The ops that do most of the arithmetic; their rate is reported too.
FLOPS = {"cpu_conv1x1_bn_forward": _conv1x1_flops, "cpu_conv1x1_bn_forward_each": _conv1x1_flops,
         "cpu_dwconv_pointwise_bn_forward": _dwconv_pointwise_flops}


def op_times(run) -> Dict[str, Dict[str, float]]:
    """ms and calls of each natfast op and of the node sums during one run(), and the GFLOP/s
    of the ops in FLOPS."""
    ms: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    flops: Dict[str, int] = defaultdict(int)

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                ms[name] += (time.perf_counter() - start) * 1000
                calls[name] += 1
                if name in FLOPS:
                    flops[name] += FLOPS[name](*args)
        return call

    namespace = torch.ops.natfast
    names = [n for n in dir(namespace)
             if not n.startswith("_") and isinstance(getattr(namespace, n), torch._ops.OpOverloadPacket)]
    originals = {n: getattr(namespace, n) for n in names}
    node_sum = RunContext.node_sum
    try:
        for n, fn in originals.items():
            setattr(namespace, n, timed(n, fn))
        RunContext.node_sum = timed("node_sum", node_sum)
        start = time.perf_counter()
        run()
        total = (time.perf_counter() - start) * 1000
    finally:
        for n, fn in originals.items():
            setattr(namespace, n, fn)
        RunContext.node_sum = node_sum
    # Microseconds kept: on small shapes one call of an op can take under 0.05 ms.
    table = {n: {"ms": round(ms[n], 3), "calls": calls[n], "share": round(ms[n] / total, 3)}
             for n in sorted(ms, key=ms.get, reverse=True)}
    for n, f in flops.items():
        table[n]["gflops"] = round(f / ms[n] / 1e6, 3)   # 3 decimals: tiny test sizes reach < 0.05
    table["rest"] = {"ms": round(total - sum(ms.values()), 3), "share": round(1 - sum(ms.values()) / total, 3)}
    return {"pass_ms": round(total, 3), "ops": table}


def main(argv: List[str]) -> Dict:
    p = arguments("natfast bench breakdown")
    p.add_argument("--rounds", type=positive_int, default=7)
    args = p.parse_args(argv)
    if args.device not in ("auto", "cpu"):
        p.error("times CPU ops only: run it with --device cpu (the default here)")
    args.device = "cpu"
    supernet, archs, batches = workload(args)
    loader = ListLoader(batches)

    def score():
        return score_architectures(supernet, archs, loader)

    def with_sums_in_place(on: bool):
        def run():
            Supernet.SUMS_IN_PLACE = on
            try:
                score()
            finally:
                Supernet.SUMS_IN_PLACE = True
        return run

    score()   # warm up
    with lane_workers.at_most(1):
        result = op_times(score)
        # The same pass uninstrumented, timed on its own: what the per-op times are shares of.
        result["whole_pass_ms"] = interleaved_median_ms({"whole": score}, args.rounds)["whole"]
    result["matmul_gflops"] = round(matmul_gflops(batches[0][0].device), 1)
    ms = interleaved_median_ms({"in_place": with_sums_in_place(True), "new_tensor": with_sums_in_place(False)},
                               args.rounds)
    result.update(sums_in_place_ms=ms["in_place"], sums_new_tensor_ms=ms["new_tensor"],
                  sums_in_place_speedup=round(ms["new_tensor"] / ms["in_place"], 3),
                  threads=torch.get_num_threads(), architectures=len(archs),
                  validation_samples=sum(len(y) for _, y in batches))
    return result
