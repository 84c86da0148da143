"""The one timing loop of natfast's benchmarks, and the machine's dense-arithmetic rate.

Every benchmark (`natfast bench ...`, the scripts in bench/) times through `interleaved_times_ms`:
the variants take turns call by call, so a change in the machine's load (this project's CPU
machines are shared) hits all of them alike and their ratios stay fair; the baseline is always a
variant of the same call, measured in the same run on the same inputs."""
from __future__ import annotations

import statistics
from time import perf_counter
from typing import Callable, Dict, List, Optional

import torch


def synchronize() -> None:
    """Wait for queued GPU work, so a host timer measures the kernels, not their launches."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _host_ms(fn: Callable[[], object]) -> float:
    synchronize()
    start = perf_counter()
    fn()
    synchronize()
    return (perf_counter() - start) * 1000


def _cuda_event_ms(fn: Callable[[], object]) -> float:
    """The GPU's time between two events around fn(): device time, without the host's wait."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def interleaved_times_ms(variants: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                         cuda_events: bool = False) -> Dict[str, List[float]]:
    """Milliseconds of every timed call of each variant, after `warmup` untimed rounds; the
    variants take turns call by call. Host timer around a GPU synchronisation by default;
    cuda_events=True: CUDA events (the GPU's time alone)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    if cuda_events:
        torch.cuda.synchronize()
    clock = _cuda_event_ms if cuda_events else _host_ms
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(clock(fn))
    return times


def interleaved_median_ms(variants: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                          cuda_events: bool = False, digits: Optional[int] = 3) -> Dict[str, float]:
    """Median ms of each variant over `repeats` interleaved calls (`interleaved_times_ms`),
    rounded to `digits` decimals (None: not rounded)."""
    times = interleaved_times_ms(variants, repeats, warmup, cuda_events)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians if digits is None else {name: round(ms, digits) for name, ms in medians.items()}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1, cuda_events: bool = False,
              digits: Optional[int] = 3) -> float:
    """Median ms of fn() over `repeats` calls after `warmup` untimed ones."""
    return interleaved_median_ms({"fn": fn}, repeats, warmup, cuda_events, digits)["fn"]


def matmul_gflops(device: torch.device = torch.device("cpu"), size: Optional[int] = None, repeats: int = 5,
                  warmup: int = 1) -> float:
    """GFLOP/s of a float32 size x size matmul on `device` with torch's threads, its fastest call:
    the peak this machine reaches on dense arithmetic, the yardstick of the benchmarks' GFLOP/s.
    Default size: 1024 on a CPU, 4096 on a GPU (where a smaller one would time the launch more
    than the arithmetic)."""
    size = size or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best_ms = min(interleaved_times_ms({"mm": lambda: torch.mm(a, b)}, repeats, warmup)["mm"])
    return 2 * size ** 3 / best_ms / 1e6
