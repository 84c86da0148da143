"""Derive benchmark: score K candidate transformations and the input architecture on the same
validation samples, batched (multi-architecture, prefix-shared, inference mode) vs one
architecture at a time with autograd recording (the authors' way) and under inference mode, both on
natfast's kernels (so the ratios are what batching and inference mode give); and the authors' way
on the reference path's plain PyTorch ops (`authors_derive_ms`: what a user of the authors' code
waits, kernels included).

It also counts the arithmetic (`derive_gflop`, `sequential_gflop`: the convolutions' and the
classifier's FLOPs, counted by torch's FlopCounterMode on the reference ops) and times a float32
matmul in the same run (`matmul_gflops`), so a reader can tell how far from the machine's peak the
batched path is: `derive_floor_ms` is the time its FLOPs would take at that matmul's rate, and
`speedup_bound_vs_sequential` the most any kernel could then give against `sequential_derive_ms`."""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, NamedTuple, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import lane_workers
from ..data import BatchLoader, load_cifar10
from ..derive import check_input, load_search, score_architectures
from ..genotype import get_family, get_named
from ..info import cpu_name
from ..ops.dispatch import use_backend
from ..policy import GCNPolicy
from ..search import pick_device
from ..supernet import Supernet
from . import positive_int
from .timing import interleaved_median_ms, matmul_gflops


def sequential_scores(supernet, archs, batches, inference: bool) -> List[float]:
    scores = []
    for arch in archs:
        correct = total = 0
        for x, y in batches:
            if inference:
                with torch.inference_mode():
                    logits = supernet(x, arch)
            else:
                logits = supernet(x, arch)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        scores.append(correct / total)
    return scores


def arguments(prog: str = "natfast bench derive") -> argparse.ArgumentParser:
    """The workload's flags (`natfast bench breakdown` takes the same)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--candidates", type=positive_int, default=10)
    p.add_argument("--arch", default="DARTS")
    p.add_argument("--batches", type=positive_int, default=4, help="validation batches scored")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=8)
    p.add_argument("--channels", type=positive_int, default=20)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", help="score with a trained search's supernet and policy (a trained "
                   "policy repeats itself, which batched scoring computes once); default: untrained")
    return p


class Workload(NamedTuple):
    supernet: Supernet
    archs: List   # the input architecture, then the K candidates
    batches: List[Tuple[torch.Tensor, torch.Tensor]]


def workload(args) -> Workload:
    """The supernet, the input architecture and K candidates sampled from the policy, and the
    validation batches: the same for every variant timed."""
    device = pick_device(args.device)
    torch.manual_seed(0)
    beta, family = get_named(args.arch)
    if args.checkpoint:
        trained = load_search(args.checkpoint, args.device)
        supernet, policy = trained.supernet, trained.policy
        beta = check_input(beta, trained.family)
        args.layers, args.channels = trained.config.layers, trained.config.channels
    else:
        family = get_family(family.name)
        supernet = Supernet(family, args.channels, args.layers).to(device)
        policy = GCNPolicy(family.primitives).to(device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = policy.sample([beta.normal, beta.reduce], gen, args.candidates)
    archs = [beta] + [policy.to_genotype(beta, s.targets) for s in samples]
    loader = BatchLoader(load_cifar10(None, "train"), None, args.batch_size, shuffle=False)
    batches = []
    for i, (x, y) in enumerate(loader.epoch(0)):
        if i == args.batches:
            break
        batches.append((x.to(device), y.to(device)))
    return Workload(supernet, archs, batches)


def main(argv: List[str]) -> Dict:
    p = arguments("natfast bench derive")
    p.add_argument("--skip-authors", action="store_true", help="skip the authors' way on plain PyTorch ops "
                   "(the slowest of the four)")
    p.add_argument("--skip-flops", action="store_true", help="skip counting the FLOPs and timing the matmul "
                   "they are compared with")
    args = p.parse_args(argv)
    supernet, archs, batches = workload(args)
    device = batches[0][0].device
    batched_loader = ListLoader(batches)
    result: Dict = {"device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads(),
                    "candidates": args.candidates,
                    "distinct_architectures": len(set(map(str, archs))), "validation_samples": sum(len(y) for _, y in batches),
                    "layers": args.layers, "channels": args.channels}
    variants = {"batched": lambda: score_architectures(supernet, archs, batched_loader),
                "sequential": lambda: sequential_scores(supernet, archs, batches, False),
                "inference": lambda: sequential_scores(supernet, archs, batches, True),
                "one_worker": lambda: _with_one_worker(score_architectures, supernet, archs, batched_loader)}
    if not args.skip_authors:
        variants["authors"] = lambda: _on_reference_ops(sequential_scores, supernet, archs, batches, False)
    # They take turns, so a change in the machine's load hits them alike.
    ms = interleaved_median_ms(variants, args.repeats)
    result["derive_ms"] = ms["batched"]
    result["sequential_derive_ms"] = ms["sequential"]
    result["sequential_inference_derive_ms"] = ms["inference"]
    result["speedup_vs_sequential"] = round(result["sequential_derive_ms"] / result["derive_ms"], 2)
    result["speedup_vs_sequential_inference"] = round(result["sequential_inference_derive_ms"] / result["derive_ms"], 2)
    # The batched path with its chunks of architectures in turn (no lane workers): what scoring
    # them side by side, one per core, gives on a CPU.
    result["one_worker_derive_ms"] = ms["one_worker"]
    result["lane_workers_speedup"] = round(ms["one_worker"] / result["derive_ms"], 2)
    if "authors" in ms:
        result["authors_derive_ms"] = ms["authors"]
        result["speedup_vs_authors"] = round(ms["authors"] / result["derive_ms"], 2)
    # Same answers: the batched scores equal the sequential ones.
    batched = score_architectures(supernet, archs, batched_loader)
    sequential = sequential_scores(supernet, archs, batches, True)
    result["max_score_difference"] = max(abs(a - b) for a, b in zip(batched, sequential))
    if not args.skip_flops:
        result.update(_arithmetic(supernet, archs, batches, result))
    return result


def _arithmetic(supernet, archs, batches, timed: Dict) -> Dict:
    """What the batched and the sequential paths compute, and the time the batched path's FLOPs
    would take at the rate of a large float32 matmul on this device (its practical peak)."""
    # FLOPs grow linearly with the samples, so the first batch is counted and scaled.
    x, y = batches[0]
    scale = sum(len(labels) for _, labels in batches) / len(y)
    batched = count_gflop(lambda: score_architectures(supernet, archs, ListLoader([(x, y)]))) * scale
    sequential = count_gflop(lambda: sequential_scores(supernet, archs, [(x, y)], True)) * scale
    peak = matmul_gflops(x.device)
    floor_ms = batched / peak * 1000
    return {"derive_gflop": round(batched, 3), "sequential_gflop": round(sequential, 3),
            "derive_gflops": round(batched / timed["derive_ms"] * 1000, 2),
            "matmul_gflops": round(peak, 2), "derive_floor_ms": round(floor_ms, 3),
            "speedup_bound_vs_sequential": round(timed["sequential_derive_ms"] / floor_ms, 2)}


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of fn's convolutions and matmuls. On the reference path, since FlopCounterMode knows
    aten's ops and not natfast's kernels; on this thread, since the mode is per thread. The
    supernet's sharing and skipping of values do not depend on the path."""
    with use_backend("reference"), lane_workers.at_most(1), torch.no_grad(), \
            FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _with_one_worker(fn, *args):
    with lane_workers.at_most(1):
        return fn(*args)


def _on_reference_ops(fn, *args):
    with use_backend("reference"):
        return fn(*args)


class ListLoader:
    """A fixed list of batches with the BatchLoader interface score_architectures uses."""

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch: int):
        return iter(self.batches)
