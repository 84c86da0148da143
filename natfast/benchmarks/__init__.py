"""natfast's benchmarks: `natfast bench <what>`, one module here each, every one returning one
JSON-able dict (times in milliseconds) with its baseline measured in the same run on the same
inputs, all timed by the one loop of `timing`. The scripts in bench/ are thin callers of these
modules (their command lines and JSON keys kept); bench/RESULTS.md records what they measured."""
from __future__ import annotations

import argparse
import importlib
from typing import Dict, List

# `natfast bench <what>`: what it measures (module: <what> with "-" as "_").
COMMANDS = {
    "steps": "the supernet's and the policy's updates, fast vs reference path; the 4 x 4 policy step "
             "batched vs one architecture at a time",
    "ops": "each hot op and op module, fast vs reference path; GFLOP/s against the machine's sgemm",
    "derive": "scoring K candidates batched vs one at a time, and how far from the machine's peak",
    "breakdown": "where the batched derive pass spends its time, per op (also bench/derive_breakdown.py)",
    "executor": "per-step cost of the compiled executor against Supernet.forward (also "
                "bench/executor_overhead.py)",
    "dispatch": "per-call cost of picking a backend, in microseconds (also bench/dispatch_overhead.py)",
    "cpu-scoring": "the CPU scoring choices (GEMM or BLAS, preprocessing read once) against their "
                   "alternatives (also bench/cpu_scoring_ab.py)",
    "factorized-reduce": "FactorizedReduce's two fused halves against the unfused way (also "
                         "bench/factorized_reduce.py)",
    "capture": "whether the graph engine's update_w is one launch sequence for every genotype (launches, "
               "host syncs, allocations, error against eager PyTorch; natfast/graph/)",
    "lanes": "how many architectures to run through the cells together on a CPU (also bench/lanes_sweep.py)",
}


def positive_int(text: str) -> int:
    """argparse type of a count that must be >= 1 (0 would time nothing, or fail deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run(what: str, argv: List[str]) -> Dict:
    """The result of `natfast bench <what> <argv...>`."""
    if what not in COMMANDS:
        raise ValueError(f"unknown benchmark {what!r}; choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(f"{__name__}.{what.replace('-', '_')}")
    return module.main(argv)


def format_result(what: str, result: Dict) -> str:
    lines = [f"natfast bench {what}"]
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            lines += [f"    {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)
