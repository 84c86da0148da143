"""Before/after speed of two natfast source trees, interleaved step by step (issue 22's speed rule).

`natfast bench steps` and `bench derive` run each tree for minutes at a time, and these shared VMs
drift by up to 2x over minutes, more than most changes. Here one worker process per tree (each
importing its own natfast, one thread) runs the same workload on the same seeds, alternating A B B A
so the drift cancels, and the ratio of the summed times is reported per workload:

  update_w   one supernet training step (batch 64, C = 20, 8 cells): sampled path forward, loss,
             backward, clip, SGD (what `bench steps` calls update_w_ms)
  score      derive's core: 11 architectures scored on 256 samples, batched (`bench derive`'s derive_ms)

    python bench/compare_trees.py BEFORE_TREE AFTER_TREE [--rounds 10]

It times with its own few lines, not natfast/benchmarks/timing.py: each worker imports a different
tree's natfast, and an old tree may not have that module.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r'''
import sys, time, torch, torch.nn.functional as F
from natfast.genotype import get_family
from natfast.sampler import sample_genotype
from natfast.supernet import Supernet
from natfast.search import score_batch
torch.manual_seed(0)
family = get_family("darts")
net = Supernet(family, 20, 8)
params = list(net.parameters())
opt = torch.optim.SGD(params, 0.01, momentum=0.9, weight_decay=3e-4)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
xv, yv = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
print("ready", flush=True)
for line in sys.stdin:
    what, seed = line.split()
    gen = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    if what == "update_w":
        loss = F.cross_entropy(net(x, sample_genotype(family, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    else:
        score_batch(net, xv, yv, [sample_genotype(family, gen) for _ in range(11)])
    print(f"{(time.perf_counter() - start) * 1e3:.3f}", flush=True)
'''


def start(tree: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=tree)
    worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=tree, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    if worker.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {tree} did not start")
    return worker


def run(worker: subprocess.Popen, what: str, seed: int) -> float:
    worker.stdin.write(f"{what} {seed}\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=10, help="A B B A rounds per workload (after 1 warm-up)")
    args = p.parse_args()
    workers = {"before": start(args.before), "after": start(args.after)}
    result = {"trees": {"before": args.before, "after": args.after}, "threads": 1}
    for what, rounds in (("update_w", args.rounds), ("score", max(2, args.rounds // 2))):
        times = {"before": [], "after": []}
        for name in workers:
            run(workers[name], what, 0)      # warm-up
        for r in range(rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                times[name].append(run(workers[name], what, r + 1))
        result[what] = {"before_ms": round(sum(times["before"]) / rounds, 1),
                        "after_ms": round(sum(times["after"]) / rounds, 1),
                        "after_over_before": round(sum(times["after"]) / sum(times["before"]), 3),
                        "rounds": rounds}
    for w in workers.values():
        w.stdin.close()
        w.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
