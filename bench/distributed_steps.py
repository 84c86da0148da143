"""Data-parallel search steps: 1 process against N processes (gloo, on this machine's cores), and
what the gradient all-reduce costs per step.

    python bench/distributed_steps.py [--world 2] [--rounds 2] [--steps 12] [--channels 8 --layers 5
                                       --batch-size 32 --num-inputs 1 --num-samples 1]

It starts its own workers, as torchrun does (RANK, WORLD_SIZE, MASTER_* in their environment):
1 process with all the cores as threads, N processes with cores/N threads each, and 1 process
with cores/N threads, in turn for --rounds rounds, on the same global batch (the tiny preset's
sizes by default). Per configuration ("processes x threads") it prints the median over steps of:
  w_step_ms, theta_step_ms      a step's wall time on rank 0 (the all-reduce and any wait included);
  w_allreduce_in_step_ms        the time in Ranks.average_gradients during update_w (the flat
                                all-reduce, and any wait for the slower process);
  allreduce_used_ms / _all_ms   the flat all-reduce alone (after a barrier) of the gradients the
                                step's architecture made, and of all the supernet's parameters
                                (what a plain all-reduce of every gradient would send);
  pairs_per_s                   the policy step's (input, transformation) pairs scored per second.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    import torch

    from natfast.config import SearchConfig
    from natfast.search import Searcher, step_generator

    with tempfile.TemporaryDirectory() as out:
        cfg = SearchConfig(out=out, channels=args.channels, layers=args.layers, batch_size=args.batch_size,
                           num_inputs=args.num_inputs, num_samples=args.num_samples, progress=False, device="cpu")
        s = Searcher(cfg, log=lambda _: None)
    ranks = s.ranks
    in_allreduce = []
    real_average = ranks.average_gradients

    def timed_average(params, values):
        start = time.perf_counter()
        result = real_average(params, values)
        in_allreduce.append(time.perf_counter() - start)
        return result

    ranks.average_gradients = timed_average

    def steps(update, loader, count, stream_of_rank):
        times = []
        batches = loader.epoch(0)
        for k in range(count):
            x, y = next(batches)
            ranks.barrier()
            start = time.perf_counter()
            update(x, y, step_generator(0, 1000 + k, ranks.rank if stream_of_rank else 0))
            times.append(time.perf_counter() - start)
        return times

    steps(s.update_w, s.w_loader, 2, False)        # warm-up
    steps(s.update_theta, s.theta_loader, 1, True)
    in_allreduce.clear()
    w_times = steps(s.update_w, s.w_loader, args.steps, False)
    w_allreduce = list(in_allreduce)
    theta_times = steps(s.update_theta, s.theta_loader, args.steps, True)

    # The flat all-reduce alone: the gradients of the last w step's path, then of every parameter.
    used = [p for p in s.w_params if p.grad is not None]
    for p in s.w_params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    def alone(params):
        times = []
        for _ in range(args.steps):
            ranks.barrier()
            start = time.perf_counter()
            real_average(params, [0.0, 0.0])
            times.append(time.perf_counter() - start)
        return times

    used_times, all_times = alone(used), alone(s.w_params)
    if ranks.is_main:
        ms = lambda ts: round(1000 * statistics.median(ts), 2)  # noqa: E731
        print(json.dumps({
            "world": ranks.world, "threads": torch.get_num_threads(),
            "w_step_ms": ms(w_times), "theta_step_ms": ms(theta_times),
            "w_allreduce_in_step_ms": ms(w_allreduce) if ranks.distributed else 0.0,
            "allreduce_used_ms": ms(used_times) if ranks.distributed else 0.0,
            "allreduce_all_ms": ms(all_times) if ranks.distributed else 0.0,
            "used_floats": sum(p.numel() for p in used), "all_floats": sum(p.numel() for p in s.w_params),
            "pairs_per_s": round(ranks.world * args.num_inputs * args.num_samples / statistics.median(theta_times), 2),
        }))


def launch(world: int, threads: int, argv) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NATFAST_BENCH_WORKER": "1"}
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__] + argv, env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"a worker failed (world {world}): exit codes {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--rounds", type=int, default=2, help="1-process and N-process runs, alternating")
    p.add_argument("--steps", type=int, default=12, help="timed steps of each kind per run")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch")
    p.add_argument("--num-inputs", type=int, default=1)
    p.add_argument("--num-samples", type=int, default=1)
    args = p.parse_args()
    if os.environ.get("NATFAST_BENCH_WORKER"):
        return worker(args)
    from natfast.info import cpu_name
    cores = os.cpu_count() or 1
    per_process = max(1, cores // args.world)
    # (processes, threads each): one process on all the cores, N sharing them, and one process on
    # one core's share (what each of the N has).
    configs = [(1, cores), (args.world, per_process), (1, per_process)]
    runs = {f"{w}x{t}": [] for w, t in configs}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for w, t in configs:
            runs[f"{w}x{t}"].append(launch(w, t, sys.argv[1:]))
        load.append(os.getloadavg()[0])
    keys = ("w_step_ms", "theta_step_ms", "w_allreduce_in_step_ms", "allreduce_used_ms", "allreduce_all_ms",
            "pairs_per_s")
    medians = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in keys} for name, rs in runs.items()}
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "cpu": cpu_name(), "cores": cores, "load_average_1min": [round(x, 2) for x in load],
               "args": vars(args), "medians_over_rounds": medians, "runs": runs}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
