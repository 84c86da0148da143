"""The measured backend choice per op and input size, consulted before DEFAULT_PREFERENCE.

`TABLE[(device_type, op)]` lists rules in increasing `max_size`; the first rule whose `max_size`
is at least the call's size (SIZE_OF[op]) gives the backend order to try. Ops or sizes without a
rule use dispatch.DEFAULT_PREFERENCE. Forcing a backend (env NATFAST_BACKEND, `use_backend`) still
wins over the table. `set_rules` replaces the rules of one op from Python.

The rules come from `measure` (run it on the target GPU: `python -m natfast.ops.dispatch_table`);
only measured entries belong here, with the measurement in bench/RESULTS.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Rule:
    max_size: float              # applies to calls whose size is <= max_size
    order: Tuple[str, ...]       # backends to try, best first


# The quantity the choice depends on: elements of the activation, or graphs in the batch.
SIZE_OF: Dict[str, Callable[..., int]] = {
    "relu_dwconv": lambda x, *args, **kwargs: x.numel(),
    "pool2d": lambda x, *args, **kwargs: x.numel(),
    "group_batch_norm": lambda x, *args, **kwargs: x.numel(),
    "conv1x1": lambda x, *args, **kwargs: x.numel(),
    "gcn_policy_logits": lambda adj, *args, **kwargs: adj.shape[0],
}

# Measured on an H100 (torch 2.11, Triton 3.6; bench/RESULTS.md, "GPU (H100)"). At the search
# shapes every Triton kernel lost to PyTorch eager in per-call time, where the host's launch cost
# dominates, so eager serves them. The second run (2026-12-06) measured the CUDA C++ relu_dwconv too:
# it lost to eager at every batch 1-256 (0.25-0.74 ms against 0.21-0.25 ms). The Triton relu_dwconv,
# pool2d and group_batch_norm and the CUDA C++ relu_dwconv have since been removed, and with them
# their rules: on CUDA only their reference is left. The CUDA C++ gcn_policy_logits is still
# unmeasured (that run's GCN measurement was cut off): the rule below keeps it off; forced
# (NATFAST_BACKEND / use_backend) it still runs.
_EAGER_FIRST = [Rule(float("inf"), ("reference", "triton"))]
TABLE: Dict[Tuple[str, str], List[Rule]] = {
    # bench/gpu_bench.py, 1024 cell graphs forward+backward: batched eager 1.75 ms, Triton 2.25 ms.
    ("cuda", "gcn_policy_logits"): list(_EAGER_FIRST),
}


def preference(op: str, device_type: str, *args, **kwargs) -> Optional[Sequence[str]]:
    """The measured backend order for this call, or None where nothing was measured."""
    rules = TABLE.get((device_type, op))
    if not rules or op not in SIZE_OF:
        return None
    size = SIZE_OF[op](*args, **kwargs)
    for rule in rules:
        if size <= rule.max_size:
            return rule.order
    return None


def set_rules(op: str, device_type: str, rules: Sequence[Rule]) -> None:
    """Replace the rules for one op on one device type (an empty list restores the default)."""
    TABLE[(device_type, op)] = sorted(rules, key=lambda r: r.max_size)
    if not rules:
        del TABLE[(device_type, op)]


def _time_ms(fn: Callable[[], object], repeat: int, synchronize: Callable[[], None]) -> float:
    fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize()
    return (time.perf_counter() - start) * 1e3 / repeat


def measure(op: str, make_args: Callable[[int], tuple], sizes: Sequence[int], backends: Sequence[str],
            repeat: int = 20) -> List[Tuple[int, Dict[str, float]]]:
    """Forward + backward time (ms) of `op` under each backend, for the inputs `make_args(size)`
    builds (tensors that need gradients must have requires_grad set). A backend that declines the
    inputs is left out of that size's times (it never times another backend in its name: forcing
    is strict, and the backend that served every timed call is checked)."""
    import torch

    from . import dispatch

    results = []
    for size in sizes:
        args = make_args(size)
        device = next(a for a in args if isinstance(a, torch.Tensor)).device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        times = {}
        for name in backends:
            if name not in dispatch.registered(op):
                continue

            def step():
                with dispatch.use_backend("auto", **{op: name}):
                    out = dispatch.call(op, *args)
                out.sum().backward()

            try:
                with dispatch.recording() as used:
                    times[name] = _time_ms(step, repeat, sync)
            except dispatch.BackendDeclined:
                continue
            if used.get(op) != {name}:
                raise RuntimeError(f"measuring {op} under {name}: the calls ran {sorted(used.get(op, ()))}")
        results.append((size, times))
    return results


def rules_from(measurements: List[Tuple[int, Dict[str, float]]], sizes_of: Callable[[int], float]) -> List[Rule]:
    """One rule per measured size (the fastest backends first); consecutive sizes with the same
    order merge. `sizes_of(size)` converts the measured size parameter to the SIZE_OF quantity."""
    rules: List[Rule] = []
    for size, times in measurements:
        order = tuple(sorted(times, key=times.get))
        if "reference" not in order:
            order += ("reference",)
        if rules and rules[-1].order == order:
            rules[-1] = Rule(sizes_of(size), order)
        else:
            rules.append(Rule(sizes_of(size), order))
    if rules:  # beyond the largest measured size, keep the last choice
        rules[-1] = Rule(float("inf"), rules[-1].order)
    return rules


def _measure_gpu() -> None:
    """Measure gcn_policy_logits at the sizes the policy uses, every backend against the others (the
    current TABLE is ignored while measuring: each backend is forced); print the rules (for TABLE)
    and the raw times (for bench/RESULTS.md). relu_dwconv, pool2d and group_batch_norm are no longer
    measured: on CUDA only their reference is left."""
    import torch

    import natfast.ops  # noqa: F401  (registers the backends)

    dev = torch.device("cuda")
    backends = ("cuda", "triton", "reference")

    def gcn_args(graphs):
        n, f, h, o = 6, 64, 64, 26
        t = lambda *s: torch.randn(*s, device=dev, requires_grad=True)
        return (torch.rand(graphs, n, n, device=dev), t(graphs, n, f), t(f, h), t(h), t(h, h), t(h), t(h, o), t(o))

    for op, make, sizes, size_of in (
            ("gcn_policy_logits", gcn_args, [1, 8, 64, 512, 4096], lambda g: g),):
        print(f"measuring {op} ...", flush=True)
        found = measure(op, make, sizes, backends)
        for size, times in found:
            print(op, size, {k: round(v, 4) for k, v in times.items()})
        print(f"TABLE[('cuda', {op!r})] = {rules_from(found, size_of)!r}")


if __name__ == "__main__":
    _measure_gpu()
