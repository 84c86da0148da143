"""`natfast bench lanes` (also `python bench/lanes_sweep.py`): how many architectures should go
through the supernet's cells together on a CPU?

Interleaves, in one process, the 4 x 4 policy step with `Supernet.LANES_AT_ONCE` = 1, 2, 4, 8 and
all, and the sequential way (one architecture at a time with autograd, as the authors' code), each
round drawing the same architectures for every variant; returns each one's median seconds over the
rounds after the first, every round's seconds, and the minor page faults of the last round. Keeps
freed memory as the `natfast` command does (NATFAST_KEEP_FREED_MEMORY=0: not).
"""
from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
from typing import Callable, Dict, List

from .._malloc import keep_freed_memory
from ..config import SearchConfig
from ..search import Searcher, step_generator
from ..supernet import Supernet
from . import positive_int
from .steps import sequential_update_theta
from .timing import interleaved_times_ms

ALL = 10 ** 6   # more lanes than any step has: all at once


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench lanes", description="the policy step's lanes at once, swept")
    p.add_argument("--rounds", type=positive_int, default=4, help="rounds (the first is a warm-up, >= 2)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=8)
    p.add_argument("--channels", type=positive_int, default=20)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be >= 2 (the first round is a warm-up)")
    kept = keep_freed_memory()
    with tempfile.TemporaryDirectory() as out:
        s = Searcher(SearchConfig(out=out, batch_size=args.batch_size, layers=args.layers, channels=args.channels,
                                  device="cpu", progress=False), log=lambda _: None)
    x, y = next(iter(s.w_loader.epoch(0)))
    s.cfg.num_inputs, s.cfg.num_samples = 4, 4
    faults: Dict[str, int] = {}

    def variant(name: str, lanes_at_once) -> Callable[[], None]:
        """One policy step per call, the k-th call of every variant on the same draws."""
        turns = itertools.count()

        def run() -> None:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            gen = step_generator(0, next(turns), 2)
            if lanes_at_once is None:
                sequential_update_theta(s, x, y, gen)
            else:
                Supernet.LANES_AT_ONCE = lanes_at_once
                s.update_theta(x, y, gen)
            faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return run

    default = Supernet.LANES_AT_ONCE
    variants = {str(n): variant(str(n), n) for n in (1, 2, 4, 8)}
    variants["all"] = variant("all", ALL)
    variants["sequential"] = variant("sequential", None)
    try:
        times = interleaved_times_ms(variants, args.rounds, warmup=0)
    finally:
        Supernet.LANES_AT_ONCE = default
    result: Dict = {"batch": args.batch_size, "layers": args.layers, "channels": args.channels,
                    "freed_memory_kept": kept, "lanes_at_once_default": default}
    for name, ms in times.items():
        result[name] = {"median_s": round(statistics.median(ms[1:]) / 1000, 3),
                        "rounds_s": [round(t / 1000, 3) for t in ms], "last_round_page_faults": faults[name]}
    return result
