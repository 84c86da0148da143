"""GPU benchmarks of the Triton backend against PyTorch eager (the reference path), same run.

    python bench/gpu_bench.py [--out results.json] [--quick]

Measures, at the search shapes (batch 64 and 256): each fused kernel forward+backward vs eager;
the device-to-device copy bandwidth (the memory-bound yardstick); the batched GCN policy for 1024
cells vs one cell at a time; the full update_w step (sampled path, batch 64) vs
`use_backend("reference")`. Writes JSON and prints a short table last. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natfast.ops import dispatch, gcn_policy_logits, group_batch_norm, pool2d, relu_dwconv  # noqa: E402
from natfast.ops.backends import load_all  # noqa: E402
from natfast.ops.mixed import routed_mixed_op  # noqa: E402
from natfast.ops.node_sum import bn_node_sum  # noqa: E402

DEV = "cuda"


def gpu_time(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> dict:
    n = 256 * 2**20 // 4
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    ms = gpu_time(lambda: dst.copy_(src), iters=30)
    return {"bytes": 2 * src.numel() * 4, "ms": ms, "GBps": 2 * src.numel() * 4 / ms / 1e6}


def fwd_bwd(op: str, make, run, backend: str):
    """Time forward+backward of run(*inputs) with `op` forced to `backend`; also forward alone."""
    inputs = make()
    dy = None

    def forward():
        with dispatch.use_backend("auto", **{op: backend}):
            return run(*inputs)

    out = forward()
    dy = torch.randn_like(out)
    leaves = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]

    def both():
        torch.autograd.grad(forward(), leaves, dy)

    with torch.no_grad():
        fwd_ms = gpu_time(forward)
    return fwd_ms, gpu_time(both)


def kernel_cases(batch: int):
    """(name, op, make inputs, run, bytes moved by the forward)."""
    def x(c, h, dtype=torch.float32):
        return lambda: [torch.randn(batch, c, h, h, device=DEV, dtype=dtype, requires_grad=True)]

    cases = []
    for c, h, k, s, d in [(16, 32, 3, 1, 1), (16, 32, 5, 1, 2), (32, 16, 3, 2, 1), (64, 8, 5, 1, 1)]:
        def make(c=c, h=h, k=k):
            return x(c, h)() + [torch.randn(c, 1, k, k, device=DEV, requires_grad=True)]
        ho = (h - 1) // s + 1
        cases.append((f"relu_dwconv C{c} {h}x{h} k{k} s{s} d{d}", "relu_dwconv", make,
                      lambda a, w, s=s, d=d: relu_dwconv(a, w, s, d), 4 * batch * c * (h * h + ho * ho)))
    for kind, c, h in [("max", 16, 32), ("avg", 32, 16)]:
        cases.append((f"pool2d {kind} C{c} {h}x{h} k3", "pool2d", x(c, h),
                      lambda a, kind=kind: pool2d(a, kind, 3, 1), 8 * batch * c * h * h))
    for c, h, groups in [(16, 32, None), (32, 16, (batch // 4,) * 4)]:
        cases.append((f"group_bn C{c} {h}x{h} groups={1 if groups is None else len(groups)}", "group_batch_norm",
                      x(c, h), lambda a, g=groups: group_batch_norm(a, g), 12 * batch * c * h * h))
    for c, h in [(16, 32), (64, 8)]:
        def make_mixed(c=c, h=h):
            routes = torch.arange(batch, device=DEV) % 4
            return x(c, h)() + [F.one_hot(routes, 4).float(), 3, 1, (batch // 2,) * 2]
        cases.append((f"routed_mixed one-hot C{c} {h}x{h}", "routed_mixed_op", make_mixed,
                      lambda a, w, k, s, g: routed_mixed_op(a, w, k, s, g), 8 * batch * c * h * h))
    for k, c, h, groups in [(2, 16, 32, None), (3, 32, 16, (batch // 4,) * 4)]:
        # Statistics (torch) read each input once, the fused apply reads them again and writes the node.
        cases.append((f"bn_node_sum k{k} C{c} {h}x{h} groups={1 if groups is None else len(groups)}", "bn_node_sum",
                      lambda c=c, h=h, k=k: [t for _ in range(k) for t in x(c, h)()],
                      lambda *xs, g=groups: bn_node_sum(xs, g), 4 * batch * c * h * h * (2 * k + 1)))
    return cases


def bench_kernels(batches, bandwidth_gbps: float) -> list:
    rows = []
    for batch in batches:
        for name, op, make, run, nbytes in kernel_cases(batch):
            row = {"kernel": name, "batch": batch}
            try:
                ref_f, ref_fb = fwd_bwd(op, make, run, "reference")
                tri_f, tri_fb = fwd_bwd(op, make, run, "triton")
                row.update(ref_fwd_ms=ref_f, triton_fwd_ms=tri_f, ref_fwd_bwd_ms=ref_fb, triton_fwd_bwd_ms=tri_fb,
                           speedup_fwd=ref_f / tri_f, speedup_fwd_bwd=ref_fb / tri_fb,
                           fwd_GBps=nbytes / tri_f / 1e6, fwd_fraction_of_copy=nbytes / tri_f / 1e6 / bandwidth_gbps)
            except Exception as exc:  # one broken case must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            rows.append(row)
    return rows


def bench_gcn(cells: int = 1024) -> dict:
    n, f, h, o = 6, 64, 64, 18
    adj = torch.rand(cells, n, n, device=DEV)
    x = torch.randn(cells, n, f, device=DEV, requires_grad=True)
    params = [torch.randn(f, h, device=DEV) * 0.1, torch.zeros(h, device=DEV), torch.randn(h, h, device=DEV) * 0.1,
              torch.zeros(h, device=DEV), torch.randn(h, o, device=DEV) * 0.1, torch.zeros(o, device=DEV)]
    params = [p.requires_grad_() for p in params]

    def batched():
        with dispatch.use_backend("auto", gcn_policy_logits="triton"):
            out = gcn_policy_logits(adj, x, *params)
        out.sum().backward()

    def one_at_a_time():
        with dispatch.use_backend("reference"):
            for i in range(cells):
                gcn_policy_logits(adj[i], x[i], *params).sum().backward()

    batched_ms = gpu_time(batched)
    loop_ms = gpu_time(one_at_a_time, iters=2, warmup=1)

    def batched_reference():
        with dispatch.use_backend("reference"):
            out = gcn_policy_logits(adj, x, *params)
        out.sum().backward()

    return {"cells": cells, "batched_triton_ms": batched_ms, "one_cell_at_a_time_ms": loop_ms,
            "batched_reference_ms": gpu_time(batched_reference), "speedup_vs_one_at_a_time": loop_ms / batched_ms}


def bench_update_w(batch: int = 64, steps: int = 6) -> dict:
    from natfast.genotype import get_family
    from natfast.sampler import sample_genotype
    from natfast.supernet import Supernet

    family = get_family("darts")
    torch.manual_seed(0)
    net = Supernet(family, 20, 8).to(DEV)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(batch, 3, 32, 32, device=DEV)
    y = torch.randint(0, 10, (batch,), device=DEV)
    archs = [sample_genotype(family, torch.Generator().manual_seed(i)) for i in range(steps)]

    def run(backend: str) -> float:
        def step(arch):
            with dispatch.use_backend(backend):
                loss = F.cross_entropy(net(x, arch), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
        step(archs[0])  # warm-up (Triton compiles here)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for arch in archs:
            step(arch)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000 / len(archs)

    fast_ms, ref_ms = run("auto"), run("reference")
    return {"batch": batch, "steps": steps, "auto_ms": fast_ms, "reference_ms": ref_ms, "speedup": ref_ms / fast_ms}


def table(results: dict) -> str:
    lines = [f"GPU check: {results['device']}, torch {results['torch']}, triton {results['triton']}",
             f"copy bandwidth: {results['copy']['GBps']:.0f} GB/s"]
    lines.append(f"{'kernel':44s} {'batch':>5s} {'fwd x':>6s} {'f+b x':>6s} {'%copy':>6s}")
    for r in results["kernels"]:
        if "error" in r:
            lines.append(f"{r['kernel']:44s} {r['batch']:5d} ERROR {r['error'][:40]}")
        else:
            lines.append(f"{r['kernel']:44s} {r['batch']:5d} {r['speedup_fwd']:6.2f} {r['speedup_fwd_bwd']:6.2f} "
                         f"{100 * r['fwd_fraction_of_copy']:5.0f}%")
    for key in ("gcn", "update_w"):
        lines.append(f"{key}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                              for k, v in results[key].items()}))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_bench.json or ./gpu_results/)")
    parser.add_argument("--quick", action="store_true", help="batch 64 only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU")
    import triton

    out = Path(args.out or Path(os.environ.get("OUT") or "gpu_results") / "gpu_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
               "backends": load_all()}
    results["copy"] = copy_bandwidth()
    results["kernels"] = bench_kernels([64] if args.quick else [64, 256], results["copy"]["GBps"])
    for key, fn in (("gcn", bench_gcn), ("update_w", bench_update_w)):
        try:
            results[key] = fn()
        except Exception as exc:
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(results, indent=2))
    print(f"full results: {out}")
    print(table(results))


if __name__ == "__main__":
    main()
