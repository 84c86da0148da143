"""Per-call cost of natfast's dispatch (picking a backend), in microseconds, on this machine.

    python bench/dispatch_overhead.py [--calls 50000]

Times `dispatch.resolve` for relu_dwconv with CPU tensors, as a CPU call and as a CUDA call would be
resolved (the rules differ; no GPU is needed), and, in the same run, reading NATFAST_BACKEND with
the cached parse against parsing it on every call (how dispatch worked before 2026-11-28).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from natfast.ops import dispatch  # noqa: E402


def microseconds(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50000)
    calls = parser.parse_args().calls
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3)
    rows = {
        "resolve relu_dwconv (cpu)": lambda: dispatch.resolve("relu_dwconv", "cpu", x, w, 1, 1),
        "resolve relu_dwconv (cuda rules)": lambda: dispatch.resolve("relu_dwconv", "cuda", x, w, 1, 1),
        "NATFAST_BACKEND parse, cached": lambda: dispatch._parse_env("auto"),
        "NATFAST_BACKEND parse, every call": lambda: dispatch._parse_env.__wrapped__("auto"),
    }
    for name, fn in rows.items():
        print(f"{name:36s} {microseconds(fn, calls):6.2f} us")


if __name__ == "__main__":
    main()
