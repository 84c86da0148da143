"""GPU benchmarks of natfast's GPU kernels against PyTorch eager (the reference path), same run.

    python bench/gpu_bench.py [--out results.json]

Measures the device-to-device copy bandwidth (the machine's memory yardstick); the batched GCN policy
for 1024 cells vs one cell at a time, under each backend that serves it (reference = PyTorch eager,
triton, cuda); the full update_w step (sampled path, batch 64) vs `use_backend("reference")`, the
compiled executor, and the practical floor (a standalone network of the same architecture, its whole
training step replayed as a CUDA graph). The per-kernel table (relu_dwconv, pool2d,
group_batch_norm against eager at batch 64 and 256) is gone: their Triton kernels and the CUDA C++
relu_dwconv were removed, having lost to eager (bench/RESULTS.md). Writes JSON and prints a short
table last. Needs a CUDA GPU; `--smoke` runs the same code at tiny sizes on the CPU
(Triton's interpreter) to check the script itself, timings meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--smoke" in sys.argv:  # before natfast registers its backends: Triton's interpreter serves CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NATFAST_TRITON_INTERPRET", "1")

from natfast.benchmarks.timing import median_ms  # noqa: E402
from natfast.graph.cuda_graph import capture  # noqa: E402
from natfast.ops import dispatch, gcn_policy_logits  # noqa: E402
from natfast.ops.backends import load_all  # noqa: E402

DEV = "cuda"
BACKENDS = ("reference", "triton", "cuda")
_STARTED = time.perf_counter()


def progress(what: str) -> None:
    """One line on stderr as each part starts: the CPU smoke run takes many minutes, and a run cut
    off by its time limit shows where it was."""
    print(f"gpu_bench [{time.perf_counter() - _STARTED:6.0f} s] {what}", file=sys.stderr, flush=True)


def randn(*shape, dtype=torch.float32, requires_grad=False) -> torch.Tensor:
    """Random inputs drawn on the CPU and copied over: a capture that fails part-way leaves CUDA's
    generator unusable ("Offset increment outside graph capture"), which must not end the run."""
    return torch.randn(*shape, dtype=dtype).to(DEV).requires_grad_(requires_grad)


def gpu_time(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() measured with CUDA events (a host timer on the CPU)."""
    if DEV == "cpu":  # --smoke: the interpreter is slow, and these timings mean nothing anyway
        iters, warmup = 1, 1
    return median_ms(fn, iters, warmup, cuda_events=DEV == "cuda", digits=None)


def graph_time(fn) -> float:
    """Median ms of fn() captured once as a CUDA graph and replayed: the device's time without the
    host's per-launch cost, which dominates gpu_time at these small shapes. Raises where fn cannot be
    captured (a host-to-device copy or a sync inside it)."""
    graph, _ = capture(fn, warmup=3)
    return gpu_time(graph.replay)


def copy_bandwidth(n: int = 256 * 2**20 // 4) -> dict:
    src = randn(n)
    dst = torch.empty_like(src)
    ms = gpu_time(lambda: dst.copy_(src), iters=30)
    return {"bytes": 2 * src.numel() * 4, "ms": ms, "GBps": 2 * src.numel() * 4 / ms / 1e6}


def backends_used(fn) -> dict:
    """{op: backend names} that dispatch picked while fn() ran (what a timing measured)."""
    with dispatch.recording() as used:
        fn()
    return used


def bench_gcn(cells: int = 1024, loop_cells: int = 1024) -> dict:
    """The policy's GCN (two graph convolutions + head, forward+backward) on `cells` cell graphs:
    batched under each backend vs the reference one cell at a time (the authors' way)."""
    n, f, h, o = 6, 64, 64, 18
    adj = torch.rand(cells, n, n).to(DEV)
    x = randn(cells, n, f, requires_grad=True)
    params = [randn(f, h) * 0.1, randn(h) * 0.1, randn(h, h) * 0.1,
              randn(h) * 0.1, randn(h, o) * 0.1, randn(o) * 0.1]
    params = [p.requires_grad_() for p in params]
    result = {"cells": cells}

    def one_at_a_time():
        with dispatch.use_backend("reference"):
            for i in range(loop_cells):
                gcn_policy_logits(adj[i], x[i], *params).sum().backward()

    loop_ms = gpu_time(one_at_a_time, iters=2, warmup=1) * cells / loop_cells
    result["one_cell_at_a_time_ms"] = loop_ms
    for backend in BACKENDS:
        if backend not in dispatch.registered("gcn_policy_logits"):
            continue
        def batched(backend=backend):
            with dispatch.use_backend("auto", gcn_policy_logits=backend):
                out = gcn_policy_logits(adj, x, *params)
            out.sum().backward()
        try:
            if backends_used(batched).get("gcn_policy_logits") != {backend}:
                continue
        except dispatch.BackendDeclined:
            continue
        try:
            ms = gpu_time(batched)
        except Exception as exc:
            traceback.print_exc()
            result[f"batched_{backend}_error"] = f"{type(exc).__name__}: {exc}"
            continue
        result[f"batched_{backend}_ms"] = ms
        result[f"batched_{backend}_speedup_vs_one_at_a_time"] = loop_ms / ms
    return result


def _fixed_network_graph_ms(genotype, family, batch: int, x, y, channels: int, layers: int) -> float:
    """The practical floor: a standalone network of `genotype` (same widths), its whole training
    step (forward, loss, backward, clipping, SGD) captured once as a CUDA graph and replayed."""
    from natfast.network import Network

    net = Network(genotype, family, channels=channels, layers=layers).to(DEV)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=3e-4)
    params = list(net.parameters())

    def step():
        opt.zero_grad(set_to_none=False)   # in place: the gradients keep their addresses for the graph
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    return graph_time(step)  # its warm-up makes the gradients and momentum buffers


def bench_update_w(batch: int = 64, steps: int = 6, channels: int = 20, layers: int = 8) -> dict:
    """The supernet's training step (sampled path, forward+backward+clip+SGD) under the default
    backends, the reference path and the compiled executor; the first sampled architecture alone
    too, against the CUDA-graph floor of a standalone network of that architecture."""
    from natfast import executor
    from natfast.genotype import get_family
    from natfast.sampler import sample_genotype
    from natfast.supernet import Supernet

    family = get_family("darts")
    torch.manual_seed(0)
    net = Supernet(family, channels, layers).to(DEV)
    params = list(net.parameters())  # once, as the search step does (walking the modules costs ms)
    opt = torch.optim.SGD(params, 0.01, momentum=0.9, weight_decay=3e-4)
    x = randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,)).to(DEV)
    archs = [sample_genotype(family, torch.Generator().manual_seed(i)) for i in range(steps)]

    def step(arch, backend: str, use_executor: bool):
        with dispatch.use_backend(backend):
            logits = executor.forward(net, x, arch) if use_executor else net(x, arch)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    def ms_per_step(backend: str, arch_list, use_executor: bool = False) -> float:
        for arch in {repr(a): a for a in arch_list}.values():  # warm-up: every architecture once
            step(arch, backend, use_executor)  # (Triton compiles each kernel configuration here)

        def steps() -> None:
            for arch in arch_list:
                step(arch, backend, use_executor)
        return median_ms(steps, 1, warmup=0, digits=None) / len(arch_list)

    result = {"batch": batch, "steps": steps, "channels": channels, "layers": layers}
    result["auto_ms"], result["reference_ms"] = ms_per_step("auto", archs), ms_per_step("reference", archs)
    result["speedup"] = result["reference_ms"] / result["auto_ms"]
    if executor.available():
        result["executor_ms"] = ms_per_step("auto", archs, use_executor=True)
        result["executor_speedup"] = result["reference_ms"] / result["executor_ms"]
    fixed = [archs[0]] * steps
    result["one_arch_auto_ms"] = ms_per_step("auto", fixed)
    result["one_arch_reference_ms"] = ms_per_step("reference", fixed)
    if DEV == "cuda":
        try:
            floor = _fixed_network_graph_ms(archs[0], family, batch, x, y, channels, layers)
            result["one_arch_fixed_network_cuda_graph_ms"] = floor
            result["one_arch_auto_over_floor"] = result["one_arch_auto_ms"] / floor
        except Exception as exc:
            traceback.print_exc()
            result["fixed_network_error"] = f"{type(exc).__name__}: {exc}"
    return result


def table(results: dict) -> str:
    lines = [f"GPU check: {results['device']}, torch {results['torch']}, triton {results['triton']}",
             f"copy bandwidth: {results['copy']['GBps']:.0f} GB/s"]
    for key in ("gcn", "update_w"):
        lines.append(f"{key}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                              for k, v in results[key].items()}))
    return "\n".join(lines)


def main() -> None:
    global DEV
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_bench.json or ./gpu_results/)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (Triton interpreter): checks the script")
    args = parser.parse_args()
    if args.smoke:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU (use --smoke to check the script on the CPU)")
    import triton

    out = Path(args.out or Path(os.environ.get("OUT") or "gpu_results") / "gpu_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "device": torch.cuda.get_device_name() if DEV == "cuda" else f"cpu (smoke: {platform.processor()})",
               "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
               "backends": load_all()}
    results["copy"] = copy_bandwidth(2**16 if args.smoke else 256 * 2**20 // 4)
    jobs = (("gcn", lambda: bench_gcn(8, 2) if args.smoke else bench_gcn()),
            ("update_w", lambda: bench_update_w(4, 2, 4, 5) if args.smoke else bench_update_w()))
    for key, fn in jobs:
        progress(key)
        try:
            results[key] = fn()
        except Exception as exc:
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(results, indent=2))
    progress("done")
    print(f"full results: {out}")
    print(table(results))


if __name__ == "__main__":
    main()
