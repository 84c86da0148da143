"""What natfast can run here: extension, backends per op and device, and why."""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Tuple

import torch

from . import _ext, executor, lane_workers
from .ops import dispatch
from .ops.backends import load_all

OPS = ("relu_dwconv", "relu_conv2d", "conv1x1", "conv1x1_bn", "cat_conv1x1_bn", "cat_conv1x1_bn_each",
       "factorized_reduce_bn", "relu_conv_bn", "dil_conv_bn", "sep_conv_bn", "group_batch_norm", "pool2d", "pool_bn",
       "gcn_policy_logits", "masked_sample", "masked_sgd")


def cpu_name() -> str:
    """The CPU, as precisely as cheaply known: on Linux its model name, and on x86 its family and
    model numbers and whether it has AVX-512 (clouds often report a bare "AMD EPYC" for CPUs
    generations apart, whose timings differ); on macOS the brand string ("Apple M2 Pro", where
    `platform` says only "arm"); elsewhere what `platform` says."""
    fallback = platform.processor() or platform.machine()
    if sys.platform == "darwin":
        try:
            brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                   text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            brand = ""
        return brand or fallback
    try:
        with open("/proc/cpuinfo") as fh:
            first = fh.read().split("\n\n")[0]
    except OSError:
        return fallback
    fields = {}
    for line in first.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fallback
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']}"
        name += ", AVX-512)" if "avx512f" in fields.get("flags", "").split() else ")"
    return name


def collect() -> Dict[str, Any]:
    module, ext_status = _ext.load()
    status = load_all()
    built_cuda = bool(module is not None and hasattr(module, "built_with_cuda") and module.built_with_cuda())
    gpu = torch.cuda.is_available()
    triton_installed = importlib.util.find_spec("triton") is not None
    info: Dict[str, Any] = {
        "natfast_version": _version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_extension": module is not None and status.get("cpu", "").startswith("active"),
        "cuda_extension": built_cuda and gpu and status.get("cuda", "").startswith("active"),
        "cuda_extension_built": built_cuda,
        "triton": triton_installed and status.get("triton", "").startswith("active"),
        "triton_installed": triton_installed,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cpu": cpu_name(),
        "cpu_capability": module.cpu_capability() if module is not None and hasattr(module, "cpu_capability") else None,
        "threads": torch.get_num_threads(),
        "cpu_kernels_threaded": (module.cpu_kernels_threaded() if module is not None
                                 and hasattr(module, "cpu_kernels_threaded") else None),
        "extension": ext_status,
        "backends": dict(status),
        "forced_backend": os.environ.get("NATFAST_BACKEND", "auto"),
        "executor": _executor_status(),
        "graph_engine": _graph_engine_status(),
        "missing_fast_paths": missing_fast_paths(),
        "lane_workers": lane_workers.describe(),
        "dispatch": {op: {dev: _chosen(op, dev) for dev in (["cpu", "cuda"] if gpu else ["cpu"])} for op in OPS},
        "backend_limits": {op: _limits(op, status) for op in OPS},
    }
    return info


def expected_fast_paths() -> Tuple[str, ...]:
    """The fast paths a normal install runs on this machine: the C++ extension (CPU kernels and the
    executor) everywhere but Windows (setup.py skips it there), with its CUDA kernels where there is a
    GPU; Triton on Linux (torch's wheels bring it) where there is a GPU or its CPU interpreter is asked
    for (NATFAST_TRITON_INTERPRET=1)."""
    expected = () if sys.platform == "win32" else ("cpu_kernels", "executor")
    gpu = torch.cuda.is_available()
    if gpu and sys.platform != "win32":
        expected += ("cuda_kernels",)
    if sys.platform.startswith("linux") and (gpu or os.environ.get("NATFAST_TRITON_INTERPRET") == "1"):
        expected += ("triton",)
    return expected


def missing_fast_paths() -> Dict[str, str]:
    """{fast path: why it is not active} for each expected one that is not (the test suite refuses
    to run without them unless told: its kernel tests would otherwise be skipped, not failed)."""
    module, why = _ext.load()
    status = load_all()
    expected = expected_fast_paths()
    missing = {}
    if "cpu_kernels" in expected and "cpu" not in dispatch.registered("relu_dwconv"):
        missing["cpu_kernels"] = why if module is None else status.get("cpu", "not loaded")
    if "executor" in expected and not executor.available():
        missing["executor"] = (why if module is None else "NATFAST_EXECUTOR=0"
                               if os.environ.get("NATFAST_EXECUTOR", "1") == "0"
                               else "natfast._C has no natfast::executor_forward")
    for path, backend in (("cuda_kernels", "cuda"), ("triton", "triton")):
        if path in expected and not status.get(backend, "").startswith("active"):
            missing[path] = status.get(backend, "not loaded")
    return missing


def _executor_status() -> str:
    if not executor.available():
        return "inactive (natfast._C without natfast::executor_forward, or NATFAST_EXECUTOR=0)"
    kernels = "natfast's C++ kernels" if executor.runs_cpu_kernels(torch.empty(0)) else "ATen's ops"
    return f"available (--executor): on a CPU it runs {kernels}, on a GPU ATen's ops"


def _graph_engine_status() -> str:
    from .graph import engine as graph
    places = []
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        why = graph.available(torch.device(device))
        runs = "runs" if device == "cuda" else "runs in Triton's interpreter (slow: tests)"
        places.append(f"{device}: " + (runs if why is None else f"no ({why})"))
    auto = "graph on CUDA" if graph.VALIDATED_ON_GPU else "eager (the graph engine has not yet passed the GPU check)"
    return f"--engine graph: {'; '.join(places)}; --engine auto: {auto}"


def _chosen(op: str, device_type: str) -> str:
    """The backend that would run `op` on this device (ignoring shape-specific declines)."""
    wanted = dispatch.forced_backend(op)
    registered = dispatch.registered(op)
    if wanted is not None:
        return wanted if wanted in registered else "reference"
    for name in dispatch.DEFAULT_PREFERENCE.get(device_type, []):
        if name in registered:
            return name
    return "reference"


def _limits(op: str, status: Dict[str, str]) -> Dict[str, str]:
    """Per active fast backend, why it may not run `op`: its declared limits, or that it has no kernel
    for it (an inactive backend's reason is its status line)."""
    declared = dispatch.declared_limits(op)
    for name in dispatch.KNOWN_BACKENDS[1:]:
        if name not in declared and status.get(name, "").startswith("active"):
            declared[name] = "no kernel for this op"
    return declared


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("natfast")
    except Exception:  # not installed (running from a source tree)
        return "source tree"


def format_text(info: Dict[str, Any]) -> str:
    lines = [f"natfast {info['natfast_version']}  torch {info['torch']} (CUDA {info['torch_cuda']})  python {info['python']}",
             f"CPU: {info['cpu']}",
             f"GPU: {info['gpu'] or 'none'}   CPU threads: {info['threads']}   CPU SIMD: {info['cpu_capability']}"
             + ("   (C++ kernels built without OpenMP: one thread)" if info["cpu_kernels_threaded"] is False else ""),
             f"extension: {info['extension']}"]
    lines += [f"backend {name:7s} {text}" for name, text in info["backends"].items()]
    lines.append(f"executor: {info['executor']}")
    lines.append(f"graph engine: {info['graph_engine']}")
    for path, why in info["missing_fast_paths"].items():
        lines.append(f"MISSING fast path {path}: {why}")
    lines.append(f"CPU scoring lane workers: {info['lane_workers']}")
    lines.append(f"forced backend (NATFAST_BACKEND): {info['forced_backend']}")
    lines.append("dispatch (the backend each op runs on, then what each active fast backend declares):")
    for op, per_dev in info["dispatch"].items():
        lines.append(f"  {op:20s} " + "  ".join(f"{d}: {b}" for d, b in per_dev.items()))
        for name, why in info["backend_limits"][op].items():
            lines.append(f"      {name:7s} {why}")
    return "\n".join(lines)
