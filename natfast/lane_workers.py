"""Independent chunks of lanes scored side by side on a CPU, each on its share of the cores.

On a CPU every op splits its work over the intra-op threads, but the supernet's ops are small (a
few MB, 1-15 ms) and gain little from more threads: on the 2-core test VM the whole 4 x 4 policy
step runs only 1.4-1.6x faster on 2 threads than on 1. The chunks of lanes of `Supernet.run`
share no value past the stem, so when several are scored at once, each worker thread takes one
chunk at a time and runs its ops on its share of the intra-op threads (one each where there are
as many workers as threads). Only for scoring (autograd records nothing): no backward depends on
the threads' order.

`NATFAST_LANE_WORKERS=N` or `at_most(n)` caps the number of workers (1: off); by default there
are as many as torch's intra-op threads.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

import torch

from .ops import dispatch

R = TypeVar("R")

_pools: Dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_cap: Optional[int] = None
_worker = threading.local()  # .active: this thread is one of the pools' workers


@contextlib.contextmanager
def at_most(workers: int) -> Iterator[None]:
    """Score with at most this many workers in this block (1: each chunk in turn, every op on all
    intra-op threads; the benchmarks measure what the workers give with it)."""
    global _cap
    if workers < 1:
        raise ValueError(f"at_most needs at least 1 worker, got {workers}")
    saved, _cap = _cap, workers
    try:
        yield
    finally:
        _cap = saved


def _env_workers() -> Optional[int]:
    """NATFAST_LANE_WORKERS as a number, or None where it is not set."""
    env = os.environ.get("NATFAST_LANE_WORKERS", "").strip()
    if not env:
        return None
    try:
        wanted = int(env)
    except ValueError:
        raise ValueError(f"NATFAST_LANE_WORKERS must be a whole number, got {env!r}") from None
    if wanted < 1:
        raise ValueError(f"NATFAST_LANE_WORKERS must be at least 1, got {wanted}")
    return wanted


def worker_count(tasks: int, like: torch.Tensor) -> int:
    """How many workers score `tasks` independent chunks of lanes of tensors like `like`: more than
    one only on a CPU, under no autograd, with several chunks and several intra-op threads."""
    if tasks < 2 or like.device.type != "cpu" or torch.is_grad_enabled():
        return 1
    wanted = _env_workers() or torch.get_num_threads()
    if _cap is not None:
        wanted = min(wanted, _cap)
    return max(1, min(wanted, tasks))


def describe() -> str:
    """The most workers a CPU scoring pass may use, and what sets it (for `natfast info`)."""
    try:
        wanted = _env_workers()
    except ValueError as exc:
        return f"invalid setting: {exc}"
    if wanted is not None:
        return f"up to {wanted} (NATFAST_LANE_WORKERS)"
    return f"up to {torch.get_num_threads()} (torch's intra-op threads; NATFAST_LANE_WORKERS=1 turns them off)"


def _executor(size: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of exactly `size` threads (kept: its threads' thread counts are already set)."""
    with _pools_lock:
        if size not in _pools:
            _pools[size] = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="natfast-lanes")
        return _pools[size]


def run(tasks: Sequence[Callable[[], R]], workers: int) -> List[R]:
    """Each task's result, in order; with workers > 1, the tasks run on that many threads (each
    taking the next task as it finishes one), each worker's ops on its share of the intra-op
    threads, under the caller's autograd mode and forced backends."""
    if workers <= 1 or getattr(_worker, "active", False):
        # (A task that scores again runs inline: waiting on its own pool could deadlock it.)
        return [task() for task in tasks]
    state = dispatch.thread_state()
    inference = torch.is_inference_mode_enabled()
    threads = torch.get_num_threads()
    share = max(1, threads // workers)

    def call(task: Callable[[], R]) -> R:
        # The worker's share of the intra-op threads (torch keeps OpenMP's and MKL's counts per thread).
        torch.set_num_threads(share)
        _worker.active = True
        with dispatch.adopt_thread_state(state), torch.inference_mode(inference), torch.no_grad():
            return task()

    try:
        futures = [_executor(workers).submit(call, task) for task in tasks]
        concurrent.futures.wait(futures)  # all of them, even after an error: none runs on behind the caller
        return [f.result() for f in futures]
    finally:
        # torch.set_num_threads also stores the count new threads start from; give it back.
        torch.set_num_threads(threads)
