"""Per-step cost of the sampled path: the compiled executor against `Supernet.forward`.

One training step's forward + backward of one DARTS architecture, both paths on the same supernet
and batch; the difference at a tiny size (where kernels take microseconds) is the Python/dispatch
overhead the executor removes. `natfast bench steps` can call `measure`; run directly:

    python bench/executor_overhead.py [--device cpu|cuda] [--repeat 20]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict

import torch

from natfast import executor
from natfast.genotype import get_named
from natfast.supernet import Supernet


def _interleaved_ms(runs, x, device, repeat: int):
    """Median forward+backward ms of each run; the runs alternate step by step, so a change in
    machine load hits all of them alike."""
    def step(run):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    for run in runs:
        for _ in range(2):
            step(run)
    times = [[] for _ in runs]
    for _ in range(repeat):
        for i, run in enumerate(runs):
            times[i].append(step(run))
    return [statistics.median(t) for t in times]


def measure(batch: int, channels: int, layers: int, device: str = "cpu", repeat: int = 20,
            arch: str = "DARTS") -> Dict[str, float]:
    """Median forward+backward ms of the Python path and of the executor (same weights, same input)."""
    dev = torch.device(device)
    genotype, family = get_named(arch)
    torch.manual_seed(0)
    net = Supernet(family, channels=channels, layers=layers).to(dev)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    plan = executor.compile_arch(net, genotype)
    python_ms, executor_ms = _interleaved_ms([lambda inp: net(inp, genotype), plan.run], x, dev, repeat)
    return {"python_ms": python_ms, "executor_ms": executor_ms, "saved_ms": python_ms - executor_ms,
            "speedup": python_ms / executor_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not executor.available():
        raise SystemExit("the compiled executor is not available (build natfast._C or set NATFAST_EXTENSION)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    for batch, channels, layers in ((2, 4, 8), (64, 20, 8)):
        r = measure(batch, channels, layers, args.device, args.repeat)
        print(f"DARTS batch {batch} C={channels} L={layers}: Supernet.forward {r['python_ms']:.2f} ms, "
              f"executor {r['executor_ms']:.2f} ms, saved {r['saved_ms']:.2f} ms/step ({r['speedup']:.2f}x)")


if __name__ == "__main__":
    main()
