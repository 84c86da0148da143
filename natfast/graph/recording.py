"""What a step launches, recorded on any machine: every Triton launch (kernel, grid, constexprs,
and for each tensor argument its address when it lies in one of the engine's persistent buffers,
else its shape and strides) and every ATen op (name and argument shapes), plus what would stall or
break a CUDA graph: host reads of device values (`.item()`), data-dependent output shapes, and
copies between devices.

The record of a step is what a CUDA graph would capture. If it is identical for every genotype,
one graph replays every genotype; `natfast bench capture` and tests/test_graph_capture.py check it.

`count_only=True` records the Triton launches without running them (their sequence does not depend
on the values, which is what the identical records prove), to count a full-size step's launches in
seconds where the interpreter would take hours.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

# ATen ops that only make a view or read metadata: no kernel on a GPU.
_NO_KERNEL = {"view", "_unsafe_view", "reshape", "expand", "as_strided", "slice", "select", "t", "transpose",
              "permute", "unsqueeze", "squeeze", "alias", "detach", "split", "split_with_sizes", "unbind",
              "chunk", "narrow", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "_reshape_alias", "view_as", "lift_fresh", "sym_size", "sym_stride", "is_same_size", "numel"}
_HOST_SYNC = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose"}
_DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                   "repeat_interleave", "bincount", "histc"}


@dataclass
class StepRecord:
    triton: List[tuple] = field(default_factory=list)
    aten: List[tuple] = field(default_factory=list)
    host_syncs: List[str] = field(default_factory=list)
    data_dependent: List[str] = field(default_factory=list)
    device_copies: List[str] = field(default_factory=list)

    @property
    def launches(self) -> int:
        """Triton launches plus ATen ops that launch a kernel (views and metadata reads do not;
        an ATen op is counted once although a few, e.g. a cuDNN convolution, launch more)."""
        return len(self.triton) + sum(1 for op in self.aten if op[0].split(".")[0] not in _NO_KERNEL)


class _Regions:
    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
                            for i, t in enumerate(tensors) if t.numel())

    def describe(self, t: torch.Tensor) -> tuple:
        p = t.data_ptr()
        for start, end, i in self.spans:
            if start <= p < end:
                return ("buffer", i, p - start, tuple(t.shape), t.stride(), str(t.dtype))
        return ("transient", tuple(t.shape), t.stride(), str(t.dtype))


class _AtenRecorder(TorchDispatchMode):
    def __init__(self, record: StepRecord):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        base = name.split(".")[0]
        shapes = tuple(tuple(a.shape) for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))
        self.record.aten.append((name, shapes))
        if base in _HOST_SYNC:
            self.record.host_syncs.append(name)
        if base in _DATA_DEPENDENT:
            self.record.data_dependent.append(name)
        if base in ("copy_", "_to_copy", "to"):
            devices = {a.device for a in args if isinstance(a, torch.Tensor)}
            target = kwargs.get("device")
            if len(devices) > 1 or (target is not None and torch.device(target) not in devices):
                self.record.device_copies.append(name)
        return func(*args, **kwargs)


@contextlib.contextmanager
def recording(buffers: Sequence[torch.Tensor], count_only: bool = False) -> Iterator[StepRecord]:
    """Record the step run inside; `buffers`: the persistent tensors whose addresses must repeat."""
    record = StepRecord()
    regions = _Regions(buffers)
    patches = _triton_patches(record, regions, count_only)
    try:
        with _AtenRecorder(record):
            yield record
    finally:
        for cls, original in patches:
            cls.run = original


def _triton_patches(record: StepRecord, regions: _Regions, count_only: bool) -> List[Tuple[type, object]]:
    classes = []
    try:
        from triton.runtime import interpreter
        classes.append(interpreter.InterpretedFunction)
    except ImportError:
        pass
    try:
        from triton.runtime.jit import JITFunction
        classes.append(JITFunction)
    except ImportError:
        pass
    patches = []
    for cls in classes:
        original = cls.run

        def run(self, *args, grid, warmup=False, _original=original, **kwargs):
            fn = getattr(self, "fn", self)
            described = tuple(regions.describe(a) if isinstance(a, torch.Tensor) else a for a in args)
            meta = tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (int, float, bool, str))))
            g = grid(kwargs) if callable(grid) else grid
            record.triton.append((getattr(fn, "__name__", str(fn)), tuple(g), described, meta))
            if count_only:
                return None
            # The interpreter's own tensor handling is not part of the step: out of the ATen record.
            with _disable_current_modes():
                return _original(self, *args, grid=grid, warmup=warmup, **kwargs)

        cls.run = run
        patches.append((cls, original))
    return patches
