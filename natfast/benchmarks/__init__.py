"""`natfast bench steps|ops|derive`: each returns one JSON-able dict (medians in milliseconds),
the baseline always measured in the same run on the same inputs."""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
from typing import Callable, Dict, List


def positive_int(text: str) -> int:
    """argparse type of a count that must be >= 1 (0 would time nothing, or fail deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _synchronize() -> None:
    """Wait for queued GPU work, so a host timer measures the kernels, not their launches."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_median_ms(variants: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median ms of each variant, the variants taking turns step by step: a change in the
    machine's load (this project's CPU machines are shared) then hits all of them alike, so their
    ratios stay fair."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _synchronize()
            start = time.perf_counter()
            fn()
            _synchronize()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median ms of fn() over `repeats` calls after `warmup` untimed ones."""
    return interleaved_median_ms({"fn": fn}, repeats, warmup)["fn"]


def run(what: str, argv: List[str]) -> Dict:
    module = importlib.import_module(f"{__name__}.{what}")
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
