"""The compiled sampled-path executor: `Supernet.forward(x, genotype)` without per-op Python.

`compile_arch(supernet, genotype)` packs the architecture's path (natfast/cell_plan.py's
NetworkPlan: what runs, where known zeros fall, which weights) once into an `ExecutorPlan` (two
integer tensors and the supernet's parameters that the path uses, in the order
csrc/executor/executor.cpp reads them); `plan.run(x)` runs stem -> cells -> classifier in C++
(operator natfast::executor_forward), recorded by autograd like the Python path.
On a CPU it runs natfast's C++ CPU kernels where the Python path would, else ATen's ops.
On CUDA, inference of a fixed architecture (a fixed beta, derive, evaluation) is replayed from a
CUDA graph once the same input shape repeats; graphs live in a small LRU cache.

`forward(supernet, x, genotype)` is the drop-in: the executor when the extension has it, else
`supernet.forward`. Env NATFAST_EXECUTOR=0 forces the Python path; NATFAST_CUDA_GRAPHS=0 turns
graph capture off.
"""
from __future__ import annotations

import functools
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from . import _ext
from . import cell_plan
from .genotype import Genotype, normalize
from .ops import dispatch
from .supernet import Supernet, edge_key
PLAN_CACHE_SIZE = 64       # plans per supernet (a plan is a few small tensors and references)
GRAPH_CACHE_SIZE = 8       # captured CUDA graphs, all plans together (each holds its activations)


def available() -> bool:
    """Whether the compiled executor can run (the extension is built with it and not disabled)."""
    return os.environ.get("NATFAST_EXECUTOR", "1") != "0" and _ext.has_op("executor_forward") and _kinds_agree()


@functools.lru_cache(maxsize=None)
def _kinds_agree() -> bool:
    """The C++ side's op kinds are natfast.cell_plan.KINDS, in order (else its ids mean other ops)."""
    if not _ext.has_op("executor_kinds"):
        return False
    kinds = tuple(torch.ops.natfast.executor_kinds())
    if kinds != cell_plan.KINDS:
        raise RuntimeError(f"natfast._C's executor knows op kinds {kinds}, natfast.cell_plan {cell_plan.KINDS}: "
                           f"rebuild the extension (pip install --no-build-isolation -e .)")
    return True


def _graphs_enabled() -> bool:
    return os.environ.get("NATFAST_CUDA_GRAPHS", "1") != "0"


@dataclass(eq=False)
class ExecutorPlan:
    """One architecture bound to one supernet's parameters (held by reference, so optimiser steps
    are seen without recompiling)."""
    cells: torch.Tensor          # (layers, 7 + B) int64: see csrc/executor/executor.cpp
    slots: torch.Tensor          # (rows, 8) int64: the slots that run, cell after cell
    params: List[torch.Tensor]
    owners: List[int]            # per parameter: -1 the stem, i cell i, layers the classifier
    _seen_shapes: set = field(default_factory=set)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the architecture on `x` (differentiable w.r.t. x and the parameters)."""
        if x.is_cuda and not torch.is_grad_enabled() and _graphs_enabled():
            return _replay_or_capture(self, x)
        return self._execute(x)

    def _execute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.natfast.executor_forward(x, self.cells, self.slots, self.params, runs_cpu_kernels(x))


# The Python path's ops that the executor also runs on natfast's C++ CPU kernels.
_CPU_KERNEL_OPS = ("relu_dwconv", "conv1x1_bn", "cat_conv1x1_bn", "pool_bn", "group_batch_norm")


def runs_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether the executor runs natfast's C++ CPU kernels, as the Python path would; a backend
    forced for any of their ops (use_backend, NATFAST_BACKEND) gives ATen's ops instead."""
    return x.device.type == "cpu" and all(
        "cpu" in dispatch.registered(op) and dispatch.forced_backend(op) in (None, "cpu") for op in _CPU_KERNEL_OPS)


_PRE_UNUSED, _PRE_CONV1X1, _PRE_FACTORIZED = 0, 1, 2


def _pack(supernet: Supernet, genotype: Genotype) -> ExecutorPlan:
    """The NetworkPlan of `genotype` as the executor's tensors, and the parameters it reads (each
    module's parameters in registration order: what executor.cpp's run_op expects of each kind)."""
    supernet.check_archs([genotype])
    b = supernet.family.num_nodes
    network = cell_plan.plan_network(genotype, supernet.family, supernet.layers)
    params: List[torch.Tensor] = list(supernet.stem.parameters())
    owners = [-1] * len(params)
    cells, slots = [], []

    def take(module) -> int:
        first = len(params)
        params.extend(module.parameters())
        owners.extend([len(cells)] * (len(params) - first))
        return first

    for run, cell in zip(network.cells, supernet.cells):
        pre0 = (_PRE_FACTORIZED if run.reduction_prev else _PRE_CONV1X1) if run.input_used[0] else _PRE_UNUSED
        header = [pre0, take(cell.pre0) if run.input_used[0] else -1,
                  int(run.input_used[1]), take(cell.pre1) if run.input_used[1] else -1, len(slots)]
        rows = {}
        for slot in run.computed:
            op = slot.spec
            repeated = run.reuse.get(slot.index)
            first = -1 if repeated is not None else take(cell.edges[edge_key(slot.source, slot.target)][slot.op])
            rows[slot.index] = len(slots)
            slots.append([op.kind_id, op.kernel, op.dilation, slot.source, slot.target, slot.stride, first,
                          -1 if repeated is None else rows[repeated]])
        outputs = list(run.output_blocks)
        cells.append(header + [len(slots), len(outputs)] + outputs + [-1] * (b - len(outputs)))
    params += [supernet.classifier.weight, supernet.classifier.bias]
    owners += [len(cells)] * 2
    return ExecutorPlan(torch.tensor(cells, dtype=torch.int64),
                        torch.tensor(slots, dtype=torch.int64).view(-1, 8), params, owners)


_plans: "weakref.WeakKeyDictionary[Supernet, OrderedDict]" = weakref.WeakKeyDictionary()


def compile_arch(supernet: Supernet, genotype: Genotype) -> ExecutorPlan:
    """The plan for `genotype` on `supernet`, from an LRU cache of PLAN_CACHE_SIZE per supernet."""
    g = normalize(genotype)
    cache = _plans.setdefault(supernet, OrderedDict())
    plan = cache.get(g)
    if plan is None:
        plan = cache[g] = _pack(supernet, g)
        if len(cache) > PLAN_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(g)
    return plan


def parameters_read(supernet: Supernet, genotype: Genotype) -> List[torch.Tensor]:
    """The supernet parameters a step of `genotype` computes the logits with: exactly those that get
    a gradient (the masked optimiser of natfast/flat_params.py updates these and no others). The
    executor also runs cells whose output no later cell reads; their parameters are not among these."""
    plan = compile_arch(supernet, genotype)
    network = cell_plan.plan_network(normalize(genotype), supernet.family, supernet.layers)
    live = network.live_cells + (True,)
    read = [p for p, owner in zip(plan.params, plan.owners) if (network.stem_live if owner < 0 else live[owner])]
    if not network.classifier_blocks:   # every output zero: the logits are the bias
        read = [p for p in read if p is not supernet.classifier.weight]
    return read


def forward(supernet: Supernet, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
    """`supernet.forward(x, genotype)`, run by the compiled executor when it is available."""
    if available():
        return compile_arch(supernet, genotype).run(x)
    return supernet(x, genotype)


# ----------------------------------------------------------------------------- CUDA graphs
@dataclass(eq=False)
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


_graphs: "OrderedDict[Tuple[int, tuple], _Captured]" = OrderedDict()


def _replay_or_capture(plan: ExecutorPlan, x: torch.Tensor) -> torch.Tensor:
    """Inference through a CUDA graph: captured the second time a shape is seen (a shape seen once
    may never repeat, and capturing costs a few runs), replayed after that."""
    key = (id(plan), (tuple(x.shape), x.dtype, x.device))
    captured = _graphs.get(key)
    if captured is None:
        if key[1] not in plan._seen_shapes:
            plan._seen_shapes.add(key[1])
            return plan._execute(x)
        captured = _capture(plan, x)
        _graphs[key] = captured
        if len(_graphs) > GRAPH_CACHE_SIZE:
            _graphs.popitem(last=False)
        # A plan may be collected and its id reused; the graph must then not be found again.
        weakref.finalize(plan, _graphs.pop, key, None)
    else:
        _graphs.move_to_end(key)
    captured.static_input.copy_(x)
    captured.graph.replay()
    return captured.static_output.clone()


def _capture(plan: ExecutorPlan, x: torch.Tensor) -> _Captured:
    static_input = x.clone()
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN picks its algorithms here)
        for _ in range(2):
            plan._execute(static_input)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = plan._execute(static_input)
    return _Captured(graph, static_input, static_output)


def clear_caches() -> None:
    """Drop every plan and captured graph (e.g. after replacing a supernet's parameter tensors)."""
    _plans.clear()
    _graphs.clear()
