"""How many architectures should go through the supernet's cells together on a CPU?

    python bench/lanes_sweep.py [--rounds 4]

Interleaves, in one process, the 4 x 4 policy step with `Supernet.LANES_AT_ONCE` = 1, 2, 4, 8 and
all, and the sequential way (one architecture at a time with autograd, as the authors' code);
prints each one's median seconds over the rounds after the first, and the minor page faults of
the last round. Keeps freed memory as the `natfast` command does (NATFAST_KEEP_FREED_MEMORY=0: not).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

from natfast._malloc import keep_freed_memory
from natfast.benchmarks.steps import sequential_update_theta
from natfast.config import SearchConfig
from natfast.search import Searcher, step_generator
from natfast.supernet import Supernet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    kept = keep_freed_memory()
    with tempfile.TemporaryDirectory() as out:
        s = Searcher(SearchConfig(out=out, batch_size=64, layers=8, channels=20, device="cpu", progress=False),
                     log=lambda _: None)
    x, y = next(iter(s.w_loader.epoch(0)))
    s.cfg.num_inputs, s.cfg.num_samples = 4, 4
    variants = [1, 2, 4, 8, 10**6, "sequential"]
    times = {v: [] for v in variants}
    faults = {}
    for r in range(args.rounds):
        for v in variants:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            if v == "sequential":
                sequential_update_theta(s, x, y, step_generator(0, r, 2))
            else:
                Supernet.LANES_AT_ONCE = v
                s.update_theta(x, y, step_generator(0, r, 2))  # the same draws as the sequential way
            times[v].append(time.perf_counter() - start)
            faults[v] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(f"policy step 4 x 4, batch 64, 8 cells, C=20; freed memory kept: {kept}")
    for v in variants:
        label = "all" if v == 10**6 else v
        print(f"  lanes at once {label!s:>10}: {statistics.median(times[v][1:]):.2f} s "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times[v])}; last round {faults[v]} page faults)")


if __name__ == "__main__":
    main()
