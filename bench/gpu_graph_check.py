"""The graph engine on a GPU, in one run (bench/gpu_check.sh's first stage; issue 23's GPU contract).

1. equivalence: the captured update_w (graph replay) against eager PyTorch from the same state, on
   5 genotypes, TF32 off: relative errors of logits, loss, gradients, parameters, momentum;
2. timing, same weights and batches: eager update_w (reference ops) over 10 genotypes; the floor (a
   standalone network of one genotype, its whole step captured as a CUDA graph); the graph engine
   over 50 fresh genotypes, per step host wall time including the table write, the batch copy, the
   replay and the loss read (median and p90), and per step over the same genotypes as the search
   loop runs them (each loss read after the next step is issued: `graph_pipelined_ms`);
3. scoring on lanes (natfast/graph/scoring.py), same weights: each lane's logits against the eager
   supernet's (TF32 off), and per set of architectures the captured scoring pass against eager
   natfast.search.score_batch (prefix-shared, natfast's eager scoring), accuracies read back
   included, for the policy step's 2 architectures and derive's 11 (median over fresh sets);
4. a profile of 3 replays: kernels per replay, device time per kernel, share of launches under
   3 us (programs that exit early), and peak memory.

    python bench/gpu_graph_check.py --out graph.json [--batch 64 --channels 20 --layers 8]
Prints a `GRAPH:` summary line last. Needs CUDA; `--smoke` runs the same code at a tiny size on the
CPU (Triton's interpreter; no capture, floor or profile there): it checks the script, not the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SMOKE = "--smoke" in sys.argv
if SMOKE:  # before natfast registers its backends: the interpreter serves CPU tensors
    os.environ.setdefault("NATFAST_TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

from natfast.genotype import get_family  # noqa: E402
from natfast.graph.check import EagerTwin, step_against_eager  # noqa: E402
from natfast.graph.cuda_graph import capture  # noqa: E402
from natfast.graph.engine import GraphEngine  # noqa: E402
from natfast.network import Network  # noqa: E402
from natfast.sampler import sample_genotype  # noqa: E402
from natfast.search import PendingStatistics  # noqa: E402
from natfast.supernet import Supernet  # noqa: E402

_STARTED = time.perf_counter()
# The policy step's m + m * n (m = n = 1) and derive's K + 1 (K = 10); the smoke run keeps the
# interpreter's minutes down (each lane is more programs there).
SCORING_LANES = (2, 3) if SMOKE else (2, 11)
WARMUPS = 1 if SMOKE else 2   # untimed runs before each timing (on a GPU: the capture, then one replay)


def progress(what: str) -> None:
    print(f"gpu_graph_check [{time.perf_counter() - _STARTED:5.0f} s] {what}", file=sys.stderr, flush=True)


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def cuda_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def floor_ms(genotype, family, x, y, channels: int, layers: int) -> float:
    """A standalone network of `genotype`, its whole training step captured and replayed."""
    net = Network(genotype, family, channels=channels, layers=layers).cuda()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, 0.025, momentum=0.9, weight_decay=3e-4)

    def step():
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(net(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    graph, _ = capture(step, warmup=3)
    return cuda_ms(graph.replay)


def scoring(engine, family, gen, x, y, lanes: int, sets: int) -> dict:
    """Lanes against eager: logits error on one set, then time per set (median) of the captured
    pass and of score_batch, each reading its accuracies back."""
    from natfast.ops import dispatch
    from natfast.search import score_batch
    scorer = engine.scorer(lanes)
    archs = [[sample_genotype(family, gen) for _ in range(lanes)] for _ in range(sets + WARMUPS)]
    got = scorer.logits(x, archs[0])
    with torch.no_grad(), dispatch.use_backend("reference"):
        want = torch.stack([engine.supernet(x, a) for a in archs[0]])
    out = {"max_rel_error_logits": float((got - want).abs().max() / want.abs().max()),
           "accuracy_mismatches": int((scorer.accuracies(x, y, archs[0]).cpu()
                                       != (want.argmax(-1) == y).float().mean(-1).cpu()).sum())}
    for name, fn in (("graph", lambda a: scorer.accuracies(x, y, a).tolist()),
                     ("eager", lambda a: score_batch(engine.supernet, x, y, a))):
        for a in archs[:WARMUPS]:
            fn(a)
        times = []
        for a in archs[WARMUPS:]:
            sync()
            t = time.perf_counter()
            fn(a)
            times.append((time.perf_counter() - t) * 1e3)
        out[f"{name}_median_ms"] = round(statistics.median(times), 3)
    out["eager_over_graph"] = round(out["eager_median_ms"] / out["graph_median_ms"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="graph_check.json")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=20)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--fresh", type=int, default=50, help="fresh genotypes timed on the graph engine")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (Triton interpreter): checks the script")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.channels, args.layers, args.fresh, image, checks, device = 4, 4, 3, 2, 16, 1, "cpu"
    elif not torch.cuda.is_available():
        sys.exit("gpu_graph_check needs CUDA (--smoke: a tiny run on the CPU)")
    else:
        image, checks, device = 32, 5, "cuda"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    family = get_family("darts")
    torch.manual_seed(0)
    net = Supernet(family, args.channels, args.layers).to(device)
    engine = GraphEngine(net, lr=0.025, momentum=0.9, weight_decay=3e-4, max_norm=5.0)
    twin = EagerTwin(engine)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, image, image, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)", "torch": torch.__version__,
              "batch": args.batch, "channels": args.channels, "layers": args.layers, "tf32": False,
              "captured": engine.capture}

    progress(f"capture + equivalence on {checks} genotypes")
    t = time.perf_counter()
    errors = [step_against_eager(twin, x, y, sample_genotype(family, gen)) for _ in range(checks)]
    result["first_capture_and_checks_s"] = round(time.perf_counter() - t, 1)
    result["max_rel_error"] = {k: max(e[k] for e in errors) for k in errors[0] if k != "unused_bitwise_unchanged"}
    result["unused_bitwise_unchanged"] = all(e["unused_bitwise_unchanged"] for e in errors)

    progress("eager update_w over 10 genotypes")
    archs = [sample_genotype(family, gen) for _ in range(10)]
    for g in archs[:2]:
        twin.step(x, y, g)
    sync()
    t = time.perf_counter()
    for g in archs:
        twin.step(x, y, g)
    sync()
    result["eager_ms"] = round((time.perf_counter() - t) * 1e3 / len(archs), 3)

    if not SMOKE:
        progress("fixed-network CUDA-graph floor")
        result["floor_ms"] = round(floor_ms(archs[0], family, x, y, args.channels, args.layers), 3)

    progress(f"graph engine over {args.fresh} fresh genotypes")
    fresh = [sample_genotype(family, gen) for _ in range(args.fresh)]
    for g in fresh[:WARMUPS + 1]:
        engine.step(x, y, g)[0].item()
    times = []
    for g in fresh:
        t = time.perf_counter()
        loss, _ = engine.step(x, y, g)
        loss.item()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    result["graph_median_ms"] = round(statistics.median(times), 3)
    result["graph_p90_ms"] = round(times[int(0.9 * (len(times) - 1))], 3)
    result["eager_over_graph"] = round(result["eager_ms"] / result["graph_median_ms"], 2)
    # As the search loop runs it: each step's loss read after the next step is issued.
    sync()
    t = time.perf_counter()
    previous = None
    for g in fresh:
        loss, _ = engine.step(x, y, g)
        current = PendingStatistics(("loss",), loss.reshape(1))
        if previous is not None:
            previous.read()
        previous = current
    previous.read()
    result["graph_pipelined_ms"] = round((time.perf_counter() - t) * 1e3 / len(fresh), 3)

    for lanes in SCORING_LANES:
        progress(f"scoring {lanes} architectures at once")
        result[f"scoring_{lanes}"] = scoring(engine, family, gen, x, y, lanes, sets=1 if SMOKE else 20)
    if SMOKE:
        print(json.dumps(result, indent=1))
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"GRAPH (smoke, CPU interpreter: not GPU numbers): max rel err "
              f"{max(result['max_rel_error'].values()):.2e}")
        return
    result["graph_over_floor"] = round(result["graph_median_ms"] / result["floor_ms"], 2)

    progress("profile of 3 replays")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for g in fresh[:3]:
            engine.step(x, y, g)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()]
    per_kernel = {}
    for e in kernels:
        total, count = per_kernel.get(e.name, (0.0, 0))
        per_kernel[e.name] = (total + e.device_time, count + 1)
    result["kernels_per_replay"] = round(len(kernels) / 3, 1)
    result["short_launch_share"] = round(sum(1 for e in kernels if e.device_time < 3.0) / max(len(kernels), 1), 3)
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:15]
    result["device_us_per_replay_by_kernel"] = {name[:80]: round(total / 3, 1) for name, (total, _) in top}
    result["device_ms_per_replay"] = round(sum(e.device_time for e in kernels) / 3e3, 3)
    result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"GRAPH: eager {result['eager_ms']} ms | floor {result['floor_ms']} ms | graph median "
          f"{result['graph_median_ms']} ms p90 {result['graph_p90_ms']} ms pipelined {result['graph_pipelined_ms']} ms | "
          f"graph/floor {result['graph_over_floor']} | "
          f"eager/graph {result['eager_over_graph']} | kernels/replay {result['kernels_per_replay']} | "
          f"max rel err {max(result['max_rel_error'].values()):.2e} | peak {result['peak_memory_gib']} GiB")
    for lanes in SCORING_LANES:
        r = result[f"scoring_{lanes}"]
        print(f"GRAPH SCORING {lanes} lanes: eager {r['eager_median_ms']} ms | graph {r['graph_median_ms']} ms | "
              f"eager/graph {r['eager_over_graph']} | logits rel err {r['max_rel_error_logits']:.2e} | "
              f"accuracy mismatches {r['accuracy_mismatches']}/{lanes}")


if __name__ == "__main__":
    main()
