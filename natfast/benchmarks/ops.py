"""Op benchmark (`natfast bench ops`): forward+backward time of each hot operation and of the supernet's
op modules at the search shapes (group "scoring": the sep_conv / dil_conv / conv_3x3 modules' forward
alone under inference mode, as architectures are scored), fast path (dispatch "auto") vs the reference
path, measured in the same run on the same inputs, with the achieved GFLOP/s against this
machine's sgemm rate (also measured in this run).

Shapes: batch 64; stride-1 ops at C = 20/40/80 with H = W = 32/16/8 (the three stages); stride-2
ops at the reduction cells' inputs, C = 40 at 32 x 32 and C = 80 at 16 x 16.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import _ext
from ..info import cpu_name
from ..ops import dispatch
from ..ops.backends import STATUS
from ..ops.conv import relu_conv2d
from ..ops.depthwise import relu_dwconv
from ..ops.fused import cat_conv1x1_bn, conv1x1_bn, pool_bn
from ..ops.layers import make_op
from ..ops.norm import group_batch_norm
from ..ops.pool import pool2d
from . import positive_int
from .timing import interleaved_median_ms, matmul_gflops

STAGES = ((20, 32), (40, 16), (80, 8))        # (C, H) of the normal cells
REDUCTIONS = ((40, 32), (80, 16))             # (C, H) of the stride-2 edges' inputs
DWCONV = {"sep3": (3, 1), "sep5": (5, 1), "dil3": (3, 2), "dil5": (5, 2)}   # name: (kernel, dilation)
MODULES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_3x3", "max_pool_3x3", "avg_pool_3x3")


def fwd_bwd_step(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """One forward+backward of fn on inputs (all requiring grad; a module's parameters too), with a
    fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    leaves_and_params = leaves + (list(fn.parameters()) if isinstance(fn, torch.nn.Module) else [])
    grad = torch.randn_like(fn(*leaves))

    def step() -> None:
        for t in leaves_and_params:
            t.grad = None
        fn(*leaves).backward(grad)
    return step


def _inference(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """One forward of fn on inputs under inference mode (scoring: nothing kept for a backward)."""
    def step() -> None:
        with torch.inference_mode():
            fn(*inputs)
    return step


def _compare(step: Callable[[], None], repeats: int, flops: float, sgemm: float,
             fused_ops: Sequence[str] = ()) -> Dict:
    """fast (auto) vs reference median of the same step, interleaved, and the fast path's GFLOP/s.
    For fused ops, also the fast path with those ops unfused (their references: the fast unfused
    ops in sequence)."""
    with dispatch.use_backend("auto"), dispatch.recording() as used:
        step()

    def under(backend: str, **per_op: str) -> Callable[[], None]:
        def run() -> None:
            with dispatch.use_backend(backend, **per_op):
                step()
        return run

    variants = {"fast": under("auto"), "reference": under("reference")}
    if fused_ops:
        variants["unfused"] = under("auto", **{op: "reference" for op in fused_ops})
    ms = interleaved_median_ms(variants, repeats, warmup=2)
    fast, ref = ms["fast"], ms["reference"]
    gflops = flops / fast / 1e6
    row = {"fast_ms": fast, "reference_ms": ref, "speedup": round(ref / fast, 2),
           "fast_gflops": round(gflops, 2), "reference_gflops": round(flops / ref / 1e6, 2),
           "fast_fraction_of_sgemm": round(gflops / sgemm, 4),
           # What "fast" ran: where the fast backend declines the inputs, it is the reference too.
           "fast_backends": {op: sorted(names) for op, names in sorted(used.items())}}
    if fused_ops:
        row["unfused_fast_ms"] = ms["unfused"]
        row["fusion_speedup"] = round(row["unfused_fast_ms"] / fast, 2)
    return row


def _dwconv_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    cases = []
    for stride, shapes in ((1, STAGES), (2, REDUCTIONS)):
        for c, h in shapes:
            for name, (k, d) in DWCONV.items():
                x, w = torch.randn(batch, c, h, h), torch.randn(c, 1, k, k)
                ho = (h - 1) // stride + 1
                flops = 3 * 2 * batch * c * ho * ho * k * k   # forward, input grad, weight grad
                cases.append((f"relu_dwconv {name} s{stride} C{c} H{h}",
                              lambda a, b, s=stride, dd=d: relu_dwconv(a, b, s, dd), [x, w], flops))
    return cases


def _conv_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    """The dense conv_3x3 / conv_5x5 candidates' ReLU + convolution (conv_1x1 is the GEMM)."""
    cases = []
    for c, h in STAGES:
        for k in (3, 5):
            x, w = torch.randn(batch, c, h, h), torch.randn(c, c, k, k)
            flops = 3 * 2 * batch * c * c * h * h * k * k   # forward, input grad, weight grad
            cases.append((f"relu_conv2d {k}x{k} C{c} H{h}", lambda a, b: relu_conv2d(a, b, 1), [x, w], flops))
    return cases


def _pool_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    cases = []
    for stride, shapes in ((1, STAGES), (2, REDUCTIONS)):
        for c, h in shapes:
            for kind in ("max", "avg"):
                ho = (h - 1) // stride + 1
                flops = 2 * batch * c * ho * ho * 9           # one op per window element, each way
                cases.append((f"pool2d {kind}3 s{stride} C{c} H{h}",
                              lambda a, k=kind, s=stride: pool2d(a, k, 3, s), [torch.randn(batch, c, h, h)], flops))
    return cases


def _norm_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    cases = []
    for c, h in STAGES:
        for groups in (None, (batch // 2, batch - batch // 2)):
            label = "1 group" if groups is None else f"{len(groups)} groups"
            flops = 9 * batch * c * h * h                    # ~4 per element forward, ~5 backward
            cases.append((f"group_batch_norm {label} C{c} H{h}",
                          lambda a, g=groups: group_batch_norm(a, g), [torch.randn(batch, c, h, h)], flops))
    return cases


def _pool_bn_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    cases = []
    for stride, shapes in ((1, STAGES), (2, REDUCTIONS)):
        for c, h in shapes:
            for kind in ("max", "avg"):
                ho = (h - 1) // stride + 1
                flops = 2 * batch * c * ho * ho * 9 + 9 * batch * c * ho * ho
                cases.append((f"pool_bn {kind}3 s{stride} C{c} H{h}",
                              lambda a, k=kind, s=stride: pool_bn(a, k, 3, s, None), [torch.randn(batch, c, h, h)], flops))
    return cases


def _conv1x1_bn_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    """The pointwise half of sep/dil convs (C -> C) and the cell preprocessing (ReLU, 4C -> C)."""
    cases = []
    for c, h in STAGES:
        for c_in, relu in ((c, False), (4 * c, True)):
            x, w = torch.randn(batch, c_in, h, h), torch.randn(c, c_in, 1, 1)
            flops = 3 * 2 * batch * c * c_in * h * h + 9 * batch * c * h * h   # 3 GEMMs + BN
            cases.append((f"conv1x1_bn{' relu' if relu else ''} C{c_in}->{c} H{h}",
                          lambda a, b, r=relu: conv1x1_bn(a, b, None, relu_input=r), [x, w], flops))
    return cases


def _cat_conv1x1_bn_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    """The cell preprocessing of a 4-node cell output, the nodes given apart (ReLU, 4 x C -> C)."""
    cases = []
    for c, h in STAGES:
        inputs = [torch.randn(batch, c, h, h) for _ in range(4)] + [torch.randn(c, 4 * c, 1, 1)]
        flops = 3 * 2 * batch * c * 4 * c * h * h + 9 * batch * c * h * h
        cases.append((f"cat_conv1x1_bn relu 4x C{c}->{c} H{h}",
                      lambda *t: cat_conv1x1_bn(t[:-1], t[-1], None, relu_input=True), inputs, flops))
    return cases


def _module_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    """The supernet's op modules (BN affine=False with batch statistics; pooling followed by BN)."""
    cases = []
    for stride, shapes in ((1, STAGES), (2, REDUCTIONS)):
        for c, h in shapes:
            for name in MODULES:
                torch.manual_seed(0)
                module = make_op(name, c, stride, affine=False, pool_bn=True, track=False)
                ho = (h - 1) // stride + 1
                k = int(name[-1])
                if name.startswith("sep"):       # two (depthwise + pointwise) pairs, 3 passes each
                    flops = 3 * 2 * 2 * batch * c * ho * ho * (k * k + c)
                elif name.startswith("dil"):
                    flops = 3 * 2 * batch * c * ho * ho * (k * k + c)
                elif name.startswith("conv"):    # dense: every input channel for every output
                    flops = 3 * 2 * batch * c * c * ho * ho * k * k
                else:
                    flops = 2 * batch * c * ho * ho * 9
                cases.append((f"{name} s{stride} C{c} H{h}", module, [torch.randn(batch, c, h, h)], flops))
    return cases


def _scoring_cases(batch: int) -> List[Tuple[str, Callable, List[torch.Tensor], float]]:
    """The sep_conv / dil_conv / conv_3x3 modules' forward alone (flops: one pass, not three)."""
    return [(name, module, inputs, flops / 3) for name, module, inputs, flops in _module_cases(batch)
            if name.startswith(("sep", "dil", "conv"))]


GROUPS = {"relu_dwconv": _dwconv_cases, "relu_conv2d": _conv_cases, "pool2d": _pool_cases, "group_batch_norm": _norm_cases,
          "pool_bn": _pool_bn_cases, "conv1x1_bn": _conv1x1_bn_cases, "cat_conv1x1_bn": _cat_conv1x1_bn_cases,
          "modules": _module_cases, "scoring": _scoring_cases}
# group: the fused dispatch ops it times
FUSED = {"pool_bn": ("pool_bn",), "conv1x1_bn": ("conv1x1_bn",), "cat_conv1x1_bn": ("cat_conv1x1_bn",),
         "scoring": ("sep_conv_bn", "dil_conv_bn", "relu_conv_bn")}
# group: how one timed step runs a case (default: forward + backward)
STEPS = {"scoring": _inference}


def bench_ops(json_out: bool = True, repeats: int = 10, batch: int = 64, groups: Optional[Sequence[str]] = None,
              threads: Optional[int] = None) -> Dict:
    """Time every case of the named groups (default: all of GROUPS). json_out=False also prints one
    line per case to stderr as it goes; the returned dict is JSON-able either way."""
    if threads is not None:
        torch.set_num_threads(threads)
    why = _ext.load()[1]
    capability = torch.ops.natfast.cpu_capability() if _ext.has_op("cpu_capability") else "no CPU kernels"
    sgemm = round(matmul_gflops(torch.device("cpu"), 1024, repeats, warmup=2), 1)
    result: Dict = {"machine": cpu_name(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "extension": why, "cpu_backend": STATUS.get("cpu", "not loaded"),
                    "cpu_capability": capability, "batch": batch, "repeats": repeats, "sgemm_gflops": sgemm}
    for group in groups or GROUPS:
        table: Dict[str, Dict] = {}
        for name, fn, inputs, flops in GROUPS[group](batch):
            step = STEPS.get(group, fwd_bwd_step)(fn, inputs)
            table[name] = _compare(step, repeats, flops, sgemm, FUSED.get(group, ()))
            if not json_out:
                row = table[name]
                print(f"{name:40s} fast {row['fast_ms']:8.3f} ms  reference {row['reference_ms']:8.3f} ms  "
                      f"x{row['speedup']:5.2f}  {row['fast_gflops']:6.2f} GFLOP/s", file=sys.stderr)
        result[group] = table
    return result


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench ops")
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--only", nargs="+", choices=sorted(GROUPS), help="benchmark only these groups")
    p.add_argument("--progress", action="store_true", help="print each case to stderr as it is measured")
    args = p.parse_args(argv)
    return bench_ops(json_out=not args.progress, repeats=args.repeats, batch=args.batch_size, groups=args.only,
                     threads=args.threads)
