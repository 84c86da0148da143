"""Random cells for the graph engine's cell-level tests: slot tables (natfast/graph/table.py layout)
with their weights in a fresh flat buffer, covering stride-2 slots, FactorizedReduce skips, both
slots of a node reading the same node (and repeating the same op: shared weights), null slots and
all-null nodes."""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from natfast.cell_plan import spec
from natfast.graph.table import KIND, MAX_WEIGHTS

DARTS_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5", "conv_3x3", "null")


def weight_shapes(op: str, c: int, stride: int) -> List[Tuple[int, ...]]:
    s = spec(op)
    if s.kind == "skip":
        return [] if stride == 1 else [(c // 2, c, 1, 1), (c // 2, c, 1, 1)]
    if s.kind == "sep_conv":
        return [(c, 1, s.kernel, s.kernel), (c, c, 1, 1), (c, 1, s.kernel, s.kernel), (c, c, 1, 1)]
    if s.kind == "dil_conv":
        return [(c, 1, s.kernel, s.kernel), (c, c, 1, 1)]
    if s.kind == "conv":
        return [(c, c, s.kernel, s.kernel)]
    return []


def random_cell(seed: int, c: int, nodes: int = 4, reduction: bool = False, ops: Sequence[str] = DARTS_OPS,
                same_input_every: int = 3) -> Tuple[List[List[int]], torch.Tensor]:
    """(rows, flat): a cell's slot rows and a flat float32 buffer (random, scaled like kaiming) that
    holds every weight they name."""
    rng = random.Random(seed)
    rows, chunks, used = [], [], 0
    for t in range(2, nodes + 2):
        sources = [rng.randrange(t), rng.randrange(t)]
        if rng.randrange(same_input_every) == 0:
            sources[1] = sources[0]
        first = None
        for i in range(2):
            op = rng.choice(ops)
            if i == 1 and first is not None and sources[1] == sources[0] and rng.randrange(2) == 0:
                op = first[0]                          # the same edge twice: shared weights
            src = sources[i]
            stride = 2 if reduction and src < 2 else 1
            if op == "null":
                rows.append([KIND["null"]] + [-1] * 8)
                continue
            if i == 1 and first is not None and (op, src) == first[:2]:
                offsets = first[2]
            else:
                offsets = []
                for shape in weight_shapes(op, c, stride):
                    n = 1
                    for d in shape:
                        n *= d
                    fan_in = n // shape[0]
                    chunks.append(torch.randn(n) * (2.0 / fan_in) ** 0.5)
                    offsets.append(used)
                    used += n
            s = spec(op)
            rows.append([KIND[s.kind], s.kernel, s.dilation, src, stride]
                        + offsets + [-1] * (MAX_WEIGHTS - len(offsets)))
            if i == 0:
                first = (op, src, offsets)
    flat = torch.cat(chunks) if chunks else torch.zeros(1)
    return rows, flat


def random_genotype(seed: int, ops: Sequence[str] = DARTS_OPS, nodes: int = 4, null_every: int = 4,
                    same_input_every: int = 3):
    """A genotype of two edges per node with random ops (nulls included, as NAT's transformations
    make) and inputs: stride-2 edges and FactorizedReduce skips in the reduction cell, nodes reading
    one node twice (sometimes with the same op: one shared edge), all-null and dead nodes."""
    from natfast.genotype import Genotype
    rng = random.Random(seed)
    cells = []
    for _ in range(2):
        edges = []
        for t in range(2, nodes + 2):
            sources = [rng.randrange(t), rng.randrange(t)]
            if rng.randrange(same_input_every) == 0:
                sources[1] = sources[0]
            chosen = [rng.choice(ops) if rng.randrange(null_every) else "null" for _ in range(2)]
            if sources[0] == sources[1] and rng.randrange(2) == 0:
                chosen[1] = chosen[0]
            edges += [(op, f, t) for op, f in zip(chosen, sources)]
        cells.append(edges)
    concat = list(range(2, nodes + 2))
    return Genotype(cells[0], concat, cells[1], concat)


class NoHostSync(TorchDispatchMode):
    """Fails on a read of a device value by the host (.item(), truth tests) or a copy to the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
                    torch.ops.aten.is_nonzero.default):
            raise AssertionError(f"host sync: {func}")
        result = func(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if (isinstance(result, torch.Tensor) and result.device.type == "cpu"
                and any(t.device.type != "cpu" for t in tensors)):
            raise AssertionError(f"copy to the host: {func}")
        return result


class LaunchRecorder:
    """Every Triton launch of one kernel class (the interpreter's or the JIT's): kernel, grid,
    arguments (a tensor as its address, shape and dtype); the launches still run."""

    def __init__(self, monkeypatch, kernel_class):
        self.launches = []
        run = kernel_class.run

        def recording_run(fn, *args, grid, warmup, **kwargs):
            describe = lambda v: (v.data_ptr(), tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v
            self.launches.append((fn.fn.__name__, tuple(grid),
                                  [describe(a) for a in args], {k: describe(v) for k, v in kwargs.items()}))
            return run(fn, *args, grid=grid, warmup=warmup, **kwargs)

        monkeypatch.setattr(kernel_class, "run", recording_run)
