"""`natfast bench dispatch` (also `python bench/dispatch_overhead.py`): per-call cost of natfast's
dispatch (picking a backend), in microseconds, on this machine.

Times `dispatch.resolve` for relu_dwconv on CPU tensors, as a CPU call and as a CUDA call would be
resolved (the rules differ; no GPU is needed), and `dispatch.forced_backend`, the reading of
NATFAST_BACKEND every dispatched call does. Each timed call runs `--calls` resolutions; the
median of `--repeats` such calls, divided by `--calls`, is reported.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List

import torch

from ..ops import dispatch
from . import positive_int
from .timing import interleaved_median_ms


def _repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()
    return run


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench dispatch", description="per-call cost of picking a backend")
    p.add_argument("--calls", type=positive_int, default=50000, help="resolutions per timed call")
    p.add_argument("--repeats", type=positive_int, default=5)
    args = p.parse_args(argv)
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3)
    variants = {
        "resolve_relu_dwconv_cpu_us": lambda: dispatch.resolve("relu_dwconv", "cpu", x, w, 1, 1),
        "resolve_relu_dwconv_cuda_rules_us": lambda: dispatch.resolve("relu_dwconv", "cuda", x, w, 1, 1),
        "forced_backend_us": lambda: dispatch.forced_backend("relu_dwconv"),
    }
    ms = interleaved_median_ms({k: _repeated(fn, args.calls) for k, fn in variants.items()}, args.repeats,
                               digits=None)
    return {"calls": args.calls, **{k: round(t / args.calls * 1000, 3) for k, t in ms.items()}}
