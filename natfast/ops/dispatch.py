"""Which implementation runs an operation: the plain-PyTorch reference or a fast backend.

Every hot operation (`relu_dwconv`, `pool2d`, `group_batch_norm`, `gcn_layer`, ...) has a
reference implementation registered under the backend name "reference". Fast backends
(C++ CPU kernels, Triton, CUDA C++) register themselves for the device types they serve.
`resolve(op, tensor)` picks, in order: a per-op override, the forced global backend, then
the first registered backend whose `supports` accepts the call, in the order of the measured
table (dispatch_table.py) or else the device's default preference list. Forcing "reference"
(env `NATFAST_BACKEND=reference`, or `use_backend("reference")`) makes any result
cross-checkable against plain PyTorch.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Iterator, List, Mapping, Optional

from . import dispatch_table

# Default order per device type; measured per-shape choices live in dispatch_table.py.
DEFAULT_PREFERENCE: Dict[str, List[str]] = {
    "cpu": ["cpu", "reference"],
    "cuda": ["cuda", "triton", "reference"],
}
KNOWN_BACKENDS = ("reference", "cpu", "triton", "cuda")


@dataclass
class Impl:
    fn: Callable
    # Optional predicate on the call's arguments: lets a backend decline shapes it lacks.
    supports: Optional[Callable[..., bool]] = None


_registry: Dict[str, Dict[str, Impl]] = {}
_state = threading.local()


def register(op: str, backend: str, fn: Callable, supports: Optional[Callable[..., bool]] = None) -> None:
    if backend not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(KNOWN_BACKENDS)}")
    _registry.setdefault(op, {})[backend] = Impl(fn, supports)


def registered(op: str) -> List[str]:
    return list(_registry.get(op, {}))


@functools.lru_cache(maxsize=64)
def _parse_env(value: str) -> tuple[Optional[str], Mapping[str, str]]:
    """`NATFAST_BACKEND` is `auto`, a backend name, or `op=backend,...` overrides. Cached: every
    dispatched call reads the variable (parsing it each time cost 1.2-1.7 us a call:
    bench/dispatch_overhead.py)."""
    forced, per_op = None, {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        if "=" in part:
            op, name = (s.strip() for s in part.split("=", 1))
            per_op[op] = name
        elif part != "auto":
            forced = part
    for name in [forced, *per_op.values()]:
        if name is not None and name not in KNOWN_BACKENDS:
            raise ValueError(f"NATFAST_BACKEND names unknown backend {name!r}; known: {', '.join(KNOWN_BACKENDS)}")
    return forced, MappingProxyType(per_op)  # read-only: the cache shares it


def _forced() -> tuple[Optional[str], Mapping[str, str]]:
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _parse_env(os.environ.get("NATFAST_BACKEND", "auto"))


def forced_backend(op: str) -> Optional[str]:
    """The backend forced for `op` (per-op override, else the global one), or None when the choice
    is automatic."""
    forced, per_op = _forced()
    return per_op.get(op, forced)


@contextlib.contextmanager
def use_backend(name: str = "reference", **per_op: str) -> Iterator[None]:
    """Force a backend for the calls in this block (`name="auto"` restores the default choice)."""
    forced, overrides = _parse_env(",".join([name] + [f"{k}={v}" for k, v in per_op.items()]))
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append((forced, overrides))
    try:
        yield
    finally:
        stack.pop()


def thread_state() -> tuple:
    """This thread's forced backends and recording, for a worker thread to adopt."""
    return (list(getattr(_state, "stack", None) or []), getattr(_state, "record", None))


@contextlib.contextmanager
def adopt_thread_state(state: tuple) -> Iterator[None]:
    """Run this block under another thread's `thread_state()` (forced backends, recording)."""
    saved = (getattr(_state, "stack", None), getattr(_state, "record", None))
    _state.stack, _state.record = list(state[0]), state[1]
    try:
        yield
    finally:
        _state.stack, _state.record = saved


@contextlib.contextmanager
def recording() -> Iterator[Dict[str, set]]:
    """Collect {op: backend names} of the calls resolved in this block (benchmarks use it to say
    which backend they timed: a forced backend that declines an input runs the reference)."""
    used: Dict[str, set] = {}
    previous = getattr(_state, "record", None)
    _state.record = used
    try:
        yield used
    finally:
        _state.record = previous


def resolve(op: str, device_type: str, *args, **kwargs) -> tuple[str, Callable]:
    """The (backend name, function) that runs `op` for these arguments."""
    name, fn = _resolve(op, device_type, *args, **kwargs)
    used = getattr(_state, "record", None)
    if used is not None:
        used.setdefault(op, set()).add(name)
    return name, fn


def _resolve(op: str, device_type: str, *args, **kwargs) -> tuple[str, Callable]:
    impls = _registry[op]
    forced, per_op = _forced()
    wanted = per_op.get(op, forced)
    if wanted is not None:
        impl = impls.get(wanted)
        if impl is not None and (impl.supports is None or impl.supports(*args, **kwargs)):
            return wanted, impl.fn
        # A forced backend that lacks this op (or these inputs) falls back to the reference,
        # never to another fast path.
        return "reference", impls["reference"].fn
    order = dispatch_table.preference(op, device_type, *args, **kwargs) or DEFAULT_PREFERENCE.get(device_type, ["reference"])
    for name in order:
        impl = impls.get(name)
        if impl is not None and (impl.supports is None or impl.supports(*args, **kwargs)):
            return name, impl.fn
    return "reference", impls["reference"].fn


def call(op: str, *args, **kwargs):
    x = args[0]
    if isinstance(x, (tuple, list)):  # ops over several tensors (bn_node_sum) take them first, as a sequence
        x = x[0]
    return resolve(op, x.device.type, *args, **kwargs)[1](*args, **kwargs)
