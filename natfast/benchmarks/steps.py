"""Step benchmark: one supernet update (update_w) and one policy update (update_theta), fast path
vs the reference path, on the same sampled architectures; and the m x n = 4 x 4 policy step,
batched (multi-architecture, prefix-shared, inference mode) vs the authors' sequential way, on
natfast's kernels and on the reference path's plain PyTorch ops."""
from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import tempfile
from typing import Dict, List, Optional

import torch

from .. import executor, lane_workers
from ..config import SearchConfig
from ..info import cpu_name
from ..ops.dispatch import use_backend
from ..search import Searcher, step_generator
from . import positive_int
from .timing import interleaved_median_ms, median_ms


def sequential_update_theta(s: Searcher, x, y, gen) -> None:
    """The authors' way, on the architectures `s.update_theta` draws from the same generator:
    every (beta, alpha) pair evaluated on its own, the policy once per pair and the supernet once
    per architecture, with autograd recording the supernet's forward passes although nothing is
    backpropagated through them."""
    cfg = s.cfg
    betas, samples, alphas = s.draw_transformations(gen)
    losses = []
    for i, beta in enumerate(betas):
        acc_beta = (s.supernet(x, beta).argmax(1) == y).float().mean()
        for j, sample in enumerate(samples):
            pair = s.policy.evaluate([beta.normal, beta.reduce], sample.choices[2 * i: 2 * i + 2])
            reward = (s.supernet(x, alphas[j][i]).argmax(1) == y).float().mean() - acc_beta
            losses.append(-pair.log_prob.sum() * (reward.item() - s.baseline) - cfg.entropy_weight * pair.entropy.sum())
    loss = torch.stack(losses).mean()
    s.policy_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.policy_optimizer.step()


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench steps")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=8)
    p.add_argument("--channels", type=positive_int, default=20)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-reference", action="store_true", help="time only the fast path")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = SearchConfig(out=out, batch_size=args.batch_size, layers=args.layers, channels=args.channels,
                           device=args.device, progress=False)
        s = Searcher(cfg, log=lambda _: None)
    x, y = next(iter(s.w_loader.epoch(0)))
    x, y = x.to(s.device), y.to(s.device)

    def stepper(update, stream: int, backend: str = "auto", executor_on: bool = False):
        """One step per call, on architectures drawn for the call's turn (the k-th call of every
        stepper of a stream draws the same ones), under `backend`."""
        turns = itertools.count()

        def run() -> None:
            s.cfg.executor = executor_on
            with use_backend(backend):
                update(x, y, step_generator(0, next(turns) % args.repeats, stream))
            s.cfg.executor = False
        return run

    result: Dict = {"device": str(s.device), "cpu": cpu_name(), "threads": torch.get_num_threads(),
                    "batch_size": args.batch_size, "layers": args.layers, "channels": args.channels,
                    "repeats": args.repeats, "torch": torch.__version__}
    for name, update, stream in (("update_w", s.update_w, 0), ("update_theta", s.update_theta, 1)):
        if args.skip_reference:
            result[f"{name}_ms"] = median_ms(stepper(update, stream), args.repeats)
            continue
        # Fast and reference take turns on the same architectures and batch.
        ms = interleaved_median_ms({"fast": stepper(update, stream), "reference": stepper(update, stream, "reference")},
                                   args.repeats)
        result[f"{name}_ms"], result[f"reference_{name}_ms"] = ms["fast"], ms["reference"]
        result[f"{name}_speedup"] = round(ms["reference"] / ms["fast"], 2)
    # The compiled executor's saving in per-step Python/dispatch overhead, each pair on the same
    # kernels: ATen's (the reference backend), and the default backends (natfast's CPU kernels).
    if executor.available():
        ms = interleaved_median_ms({"executor": stepper(s.update_w, 0, "reference", executor_on=True),
                                    "python": stepper(s.update_w, 0, "reference"),
                                    "executor_auto": stepper(s.update_w, 0, executor_on=True),
                                    "python_auto": stepper(s.update_w, 0)}, args.repeats)
        result["executor_update_w_ms"], result["python_path_aten_update_w_ms"] = ms["executor"], ms["python"]
        result["executor_auto_update_w_ms"] = ms["executor_auto"]
        result["python_path_auto_update_w_ms"] = ms["python_auto"]
    # Policy step with m x n = 4 x 4: batched vs sequential, both on the default backend (what
    # batching gives), and the authors' way on plain PyTorch ops (what their users wait).
    # The k-th call of every variant scores the same architectures (drawn from stream 2, turn k).
    s.cfg.num_inputs, s.cfg.num_samples = 4, 4

    def policy_step(update, backend: str = "auto", workers: Optional[int] = None):
        turns = itertools.count()

        def run() -> None:
            with use_backend(backend), (lane_workers.at_most(workers) if workers else contextlib.nullcontext()):
                update(x, y, step_generator(0, next(turns), 2))
        return run

    variants = {"batched": policy_step(s.update_theta), "sequential": policy_step(functools.partial(sequential_update_theta, s)),
                "one_worker": policy_step(s.update_theta, workers=1)}
    if not args.skip_reference:
        variants["authors"] = policy_step(functools.partial(sequential_update_theta, s), "reference")
    ms = interleaved_median_ms(variants, args.repeats)
    result["update_theta_4x4_ms"], result["sequential_update_theta_4x4_ms"] = ms["batched"], ms["sequential"]
    result["update_theta_4x4_speedup"] = round(ms["sequential"] / ms["batched"], 2)
    # Batched with its chunks of architectures in turn: what the lane workers give (on a CPU).
    result["one_worker_update_theta_4x4_ms"] = ms["one_worker"]
    result["update_theta_4x4_lane_workers_speedup"] = round(ms["one_worker"] / ms["batched"], 2)
    if "authors" in ms:
        result["authors_update_theta_4x4_ms"] = ms["authors"]
        result["update_theta_4x4_speedup_vs_authors"] = round(ms["authors"] / ms["batched"], 2)
    return result
