"""`natfast bench executor` (also `python bench/executor_overhead.py`): per-step cost of the
sampled path, the compiled executor against `Supernet.forward`.

One training step's forward + backward of one architecture, both paths on the same supernet and
batch, taking turns; the difference at a tiny size (where kernels take microseconds) is the
Python/dispatch overhead the executor removes, at the search size what it is worth in a step.
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import torch

from .. import executor
from ..genotype import get_named
from ..supernet import Supernet
from . import positive_int
from .timing import interleaved_median_ms

# (batch, channels, layers): tiny (overhead alone), and the search's size.
SIZES = ((2, 4, 8), (64, 20, 8))


def measure(batch: int, channels: int, layers: int, device: str = "cpu", repeat: int = 20,
            arch: str = "DARTS") -> Dict[str, float]:
    """Median forward+backward ms of the Python path and of the executor (same weights, same input)."""
    dev = torch.device(device)
    genotype, family = get_named(arch)
    torch.manual_seed(0)
    net = Supernet(family, channels=channels, layers=layers).to(dev)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    plan = executor.compile_arch(net, genotype)
    ms = interleaved_median_ms({"python": lambda: net(x, genotype).sum().backward(),
                                "executor": lambda: plan.run(x).sum().backward()}, repeat, warmup=2, digits=None)
    return {"python_ms": round(ms["python"], 3), "executor_ms": round(ms["executor"], 3),
            "saved_ms": round(ms["python"] - ms["executor"], 3), "speedup": round(ms["python"] / ms["executor"], 2)}


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench executor",
                                description="the compiled executor against Supernet.forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=positive_int, default=20)
    p.add_argument("--arch", default="DARTS", help="a named architecture")
    args = p.parse_args(argv)
    if not executor.available():
        p.error("the compiled executor is not available (build natfast._C, or set NATFAST_EXTENSION)")
    result: Dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                    "arch": args.arch}
    for batch, channels, layers in SIZES:
        result[f"batch{batch}_C{channels}_L{layers}"] = measure(batch, channels, layers, args.device, args.repeat,
                                                                 args.arch)
    return result
