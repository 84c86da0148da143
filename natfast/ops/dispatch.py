"""Which implementation runs an operation: the plain-PyTorch reference or a fast backend.

Every hot operation (`relu_dwconv`, `pool2d`, `group_batch_norm`, `gcn_policy_logits`, ...) has a
reference implementation registered under the backend name "reference". Fast backends (C++ CPU
kernels, Triton, CUDA C++) register themselves for the device types they serve, each declaring
three separate things (as xformers' fmha dispatch does):

* `limits(*args) -> reason or None`: what the kernel cannot do (a dtype, a kernel size, a device);
* `prefer(*args) -> reason or None`: where it can run but was measured slower than the next choice
  (consulted only when the choice is automatic);
* `scoring_only`: a forward-only kernel, chosen only when autograd records nothing for these inputs
  (scoring architectures; the one inference-mode decision, made here for every op).

`resolve(op, device_type, *args)` picks, in order:
1. a per-op forced backend (`NATFAST_BACKEND=op=name`, `use_backend(op=name)`): it runs, or the call
   fails with `BackendDeclined` saying why; it never falls back silently;
2. a forced global backend (`NATFAST_BACKEND=name`, `use_backend(name)`): it runs every op it
   implements, or the call fails saying why; an op it does not implement runs the reference (and a
   fused op whose reference is *composite* runs that reference, whose parts are forced in turn);
3. otherwise the first backend, in the measured order (dispatch_table.py) or the device's default
   order, that has no reason to decline.
Forcing "reference" (`NATFAST_BACKEND=reference`, `use_backend("reference")`) makes any result
cross-checkable against plain PyTorch. `explain(op, device_type, *args)` lists every backend's reason.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from . import dispatch_table

# Default order per device type; measured per-shape choices live in dispatch_table.py.
DEFAULT_PREFERENCE: Dict[str, List[str]] = {
    "cpu": ["cpu", "reference"],
    "cuda": ["cuda", "triton", "reference"],
}
KNOWN_BACKENDS = ("reference", "cpu", "triton", "cuda")

Reason = Optional[str]  # None: no objection


class BackendDeclined(RuntimeError):
    """A forced backend cannot run this call (it never silently hands it to another backend)."""


@dataclass
class Impl:
    fn: Callable
    limits: Optional[Callable[..., Reason]] = None
    prefer: Optional[Callable[..., Reason]] = None
    scoring_only: bool = False
    # For a reference: it calls other dispatched ops (so under a forced backend, running it still
    # runs that backend's kernels for the parts).
    composite: bool = False


_registry: Dict[str, Dict[str, Impl]] = {}
_state = threading.local()


def register(op: str, backend: str, fn: Callable, limits: Optional[Callable[..., Reason]] = None,
             prefer: Optional[Callable[..., Reason]] = None, scoring_only: bool = False,
             composite: bool = False) -> None:
    if backend not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(KNOWN_BACKENDS)}")
    _registry.setdefault(op, {})[backend] = Impl(fn, limits, prefer, scoring_only, composite)


def registered(op: str) -> List[str]:
    return list(_registry.get(op, {}))


def operations() -> List[str]:
    """Every dispatched op."""
    return sorted(_registry)


@functools.lru_cache(maxsize=64)
def _parse_env(value: str) -> Tuple[Optional[str], Mapping[str, str]]:
    """`NATFAST_BACKEND` is `auto`, a backend name, or `op=backend,...` overrides. Cached: every
    dispatched call reads the variable (parsing it each time cost 1.2-1.7 us a call:
    bench/RESULTS.md, "Other measurements")."""
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


def _forced() -> Tuple[Optional[str], Mapping[str, str]]:
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
    """Collect {op: backend names} of the calls resolved in this block (tests and benchmarks use it
    to prove which backend they checked or timed)."""
    used: Dict[str, set] = {}
    previous = getattr(_state, "record", None)
    _state.record = used
    try:
        yield used
    finally:
        _state.record = previous


def _tensors(args) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def records_autograd(*args) -> bool:
    """Whether autograd records a call on these arguments (then a scoring-only kernel cannot serve it)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(args))


def _capability(impl: Impl, args, kwargs) -> Reason:
    """Why `impl` cannot run this call (None: it can)."""
    if impl.scoring_only and records_autograd(*args, *kwargs.values()):
        return "forward-only kernel (scoring): autograd is recording this call"
    return impl.limits(*args, **kwargs) if impl.limits is not None else None


def explain(op: str, device_type: str, *args, **kwargs) -> Dict[str, Reason]:
    """Every registered backend of `op` and why the automatic choice would skip it for these
    arguments (None: no reason; the first such backend in the order runs)."""
    reasons: Dict[str, Reason] = {}
    for name, impl in _registry[op].items():
        reason = _capability(impl, args, kwargs)
        if reason is None and impl.prefer is not None:
            reason = impl.prefer(*args, **kwargs)
            reason = None if reason is None else f"measured slower: {reason}"
        reasons[name] = reason
    return reasons


def declared_limits(op: str) -> Dict[str, str]:
    """What each registered fast backend of `op` declares, in words: its limits, whether it serves
    scoring only, and where a measured preference sends calls elsewhere."""
    described = {}
    for name, impl in _registry.get(op, {}).items():
        if name == "reference":
            continue
        words = [_first_line(impl.limits) or "any input"]
        if impl.scoring_only:
            words.append("forward only (scoring: autograd not recording)")
        if impl.prefer is not None:
            words.append(f"chosen where measured faster: {_first_line(impl.prefer) or 'see its rule'}")
        described[name] = "; ".join(words)
    return described


def _first_line(fn: Optional[Callable]) -> str:
    doc = (fn.__doc__ or "") if fn is not None else ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def resolve(op: str, device_type: str, *args, **kwargs) -> Tuple[str, Callable]:
    """The (backend name, function) that runs `op` for these arguments; BackendDeclined when a
    forced backend cannot run it."""
    name, fn = _resolve(op, device_type, *args, **kwargs)
    used = getattr(_state, "record", None)
    if used is not None:
        used.setdefault(op, set()).add(name)
    return name, fn


def _declined(op: str, name: str, why: str, per_op: bool) -> BackendDeclined:
    how = f"NATFAST_BACKEND={op}={name} / use_backend({op}={name!r})" if per_op else \
        f"NATFAST_BACKEND={name} / use_backend({name!r})"
    return BackendDeclined(f"{op}: the {name} backend is forced ({how}) but cannot run this call: {why}")


def _resolve(op: str, device_type: str, *args, **kwargs) -> Tuple[str, Callable]:
    impls = _registry[op]
    forced, per_op = _forced()
    wanted = per_op.get(op)
    if wanted is not None:
        impl = impls.get(wanted)
        if impl is None:
            from .backends import STATUS
            status = STATUS.get(wanted, "not loaded")
            raise _declined(op, wanted, f"it has no {op} here (the {wanted} backend is {status})", True)
        reason = _capability(impl, args, kwargs)
        if reason is not None:
            raise _declined(op, wanted, reason, True)
        return wanted, impl.fn
    if forced is not None:
        impl = impls.get(forced)
        if impl is None:  # the backend does not implement this op at all
            return "reference", impls["reference"].fn
        reason = _capability(impl, args, kwargs)
        if reason is None:
            return forced, impl.fn
        if impls["reference"].composite:  # its parts run on the forced backend (or fail there)
            return "reference", impls["reference"].fn
        raise _declined(op, forced, reason, False)
    order = dispatch_table.preference(op, device_type, *args, **kwargs) or DEFAULT_PREFERENCE.get(device_type, ["reference"])
    for name in order:
        impl = impls.get(name)
        if impl is None or _capability(impl, args, kwargs) is not None:
            continue
        if impl.prefer is not None and impl.prefer(*args, **kwargs) is not None:
            continue
        return name, impl.fn
    return "reference", impls["reference"].fn


def call(op: str, *args, **kwargs):
    x = args[0]
    if isinstance(x, (tuple, list)):  # ops over several tensors (cat_conv1x1_bn) take them first, as a sequence
        x = x[0]
    return resolve(op, x.device.type, *args, **kwargs)[1](*args, **kwargs)
