"""`natfast bench cpu-scoring` (also `python bench/cpu_scoring_ab.py`): what natfast's CPU scoring
choices give, each against its alternative in the same process.

    natfast bench cpu-scoring [--rounds 4] [--ops-only | --step-only]

Ops (one thread, batch 64 by default, the shapes of the supernet's three stages): the fused kernels whose GEMM can be
natfast's AVX2 kernel or torch's BLAS, with NATFAST_CPU_BLAS unset (the automatic choice), =1
(BLAS throughout) and =0 (natfast's kernel throughout), switched between calls (the kernels read
it on every call); scoring ops forward only, the preprocessing also forward + backward.

Step (the 4 x 4 policy step, by default batch 64, 8 cells, C = 20; all threads): as shipped, with the BLAS
throughout, and with the two cells that preprocess one cell output each reading it on their own
(`cat_conv1x1_bn_each` forced to its reference).

Variants take turns round by round; returns each one's median milliseconds and the ratios to the
shipped choice. Keeps freed memory as the `natfast` command does.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from typing import Callable, Dict, List

import torch

from .._malloc import keep_freed_memory
from ..config import SearchConfig
from ..ops import fused
from ..ops.dispatch import use_backend
from ..search import Searcher, step_generator
from . import positive_int
from .timing import interleaved_median_ms

BLAS_SETTINGS = {"auto": "", "blas": "1", "own": "0"}


def _with_blas(setting: str, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        os.environ["NATFAST_CPU_BLAS"] = setting
        fn()
    return run


def ops_ab(rounds: int, batch: int = 64) -> Dict[str, Dict[str, float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    results: Dict[str, Dict[str, float]] = {}
    try:
        for hw, c in ((32, 20), (16, 40), (8, 80)):
            x = torch.randn(batch, c, hw, hw, generator=gen)
            dw1, dw2 = (torch.randn(c, 1, 3, 3, generator=gen) for _ in range(2))
            pw1, pw2 = (torch.randn(c, c, 1, 1, generator=gen) for _ in range(2))
            nodes = [torch.randn(batch, c, hw, hw, generator=gen, requires_grad=True) for _ in range(4)]
            weight = torch.randn(c, 4 * c, 1, 1, generator=gen, requires_grad=True)
            grad = torch.randn(batch, c, hw, hw, generator=gen)

            def sep_conv() -> None:
                with torch.inference_mode():
                    fused.sep_conv_bn(x, dw1, pw1, dw2, pw2, 1, None)

            def preprocess() -> None:
                with torch.inference_mode():
                    fused.cat_conv1x1_bn(nodes, weight, None, relu_input=True)

            def preprocess_fwd_bwd() -> None:
                fused.cat_conv1x1_bn(nodes, weight, None, relu_input=True).backward(grad)

            for name, fn in (("sep_conv_scoring", sep_conv), ("preprocess_scoring", preprocess),
                             ("preprocess_fwd_bwd", preprocess_fwd_bwd)):
                ms = interleaved_median_ms({k: _with_blas(v, fn) for k, v in BLAS_SETTINGS.items()}, rounds * 5)
                results[f"{name}_C{c}_{hw}x{hw}"] = {**{k: round(t, 2) for k, t in ms.items()},
                                                    "blas_over_auto": round(ms["blas"] / ms["auto"], 3)}
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("NATFAST_CPU_BLAS", None)
    return results


def step_ab(rounds: int, batch: int = 64, layers: int = 8, channels: int = 20) -> Dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        s = Searcher(SearchConfig(out=out, batch_size=batch, layers=layers, channels=channels, device="cpu",
                                  progress=False),
                     log=lambda _: None)
    x, y = next(iter(s.w_loader.epoch(0)))
    s.cfg.num_inputs, s.cfg.num_samples = 4, 4

    def step(blas: str, **forced: str) -> Callable[[], None]:
        turns = itertools.count()

        def run() -> None:
            os.environ["NATFAST_CPU_BLAS"] = blas
            with use_backend("auto", **forced):
                s.update_theta(x, y, step_generator(0, next(turns), 2))
        return run

    try:
        ms = interleaved_median_ms({"shipped": step(""), "blas": step("1"),
                                    "separate_preprocessing": step("", cat_conv1x1_bn_each="reference")}, rounds)
    finally:
        os.environ.pop("NATFAST_CPU_BLAS", None)
    result = {f"{k}_ms": round(t, 1) for k, t in ms.items()}
    result["blas_over_shipped"] = round(ms["blas"] / ms["shipped"], 3)
    result["separate_preprocessing_over_shipped"] = round(ms["separate_preprocessing"] / ms["shipped"], 3)
    return result


def main(argv: List[str]) -> Dict:
    parser = argparse.ArgumentParser(prog="natfast bench cpu-scoring",
                                     description="natfast's CPU scoring choices against their alternatives")
    parser.add_argument("--rounds", type=positive_int, default=4)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ops-only", action="store_true")
    only.add_argument("--step-only", action="store_true")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--layers", type=positive_int, default=8, help="the policy step's cells")
    parser.add_argument("--channels", type=positive_int, default=20, help="the policy step's width")
    args = parser.parse_args(argv)
    kept = keep_freed_memory()
    report: Dict[str, object] = {"threads": torch.get_num_threads(), "freed_memory_kept": kept}
    if not args.step_only:
        report["ops_one_thread_ms"] = ops_ab(args.rounds, args.batch_size)
    if not args.ops_only:
        report["policy_step_4x4"] = step_ab(args.rounds, args.batch_size, args.layers, args.channels)
    return report
