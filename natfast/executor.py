"""The compiled sampled-path executor: `Supernet.forward(x, genotype)` without per-op Python.

`compile_arch(supernet, genotype)` packs the architecture once into an `ExecutorPlan` (the edges
as op ids, the output nodes of every cell, and the supernet's parameters that the architecture
uses, in the order csrc/executor/executor.cpp consumes them); `plan.run(x)` runs stem -> cells ->
classifier in C++ (operator natfast::executor_forward), recorded by autograd like the Python path.
On a CPU it runs natfast's C++ CPU kernels where the Python path would, else ATen's ops.
On CUDA, inference of a fixed architecture (a fixed beta, derive, evaluation) is replayed from a
CUDA graph once the same input shape repeats; graphs live in a small LRU cache.

`forward(supernet, x, genotype)` is the drop-in: the executor when the extension has it, else
`supernet.forward`. Env NATFAST_EXECUTOR=0 forces the Python path; NATFAST_CUDA_GRAPHS=0 turns
graph capture off.
"""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from . import _ext
from .genotype import Genotype, normalize, output_nodes
from .ops import dispatch
from .ops.layers import OPERATIONS
from .supernet import Supernet, edge_key, reduction_layers

OP_IDS = {name: i for i, name in enumerate(OPERATIONS)}
PLAN_CACHE_SIZE = 64       # plans per supernet (a plan is a few small tensors and references)
GRAPH_CACHE_SIZE = 8       # captured CUDA graphs, all plans together (each holds its activations)


def available() -> bool:
    """Whether the compiled executor can run (the extension is built with it and not disabled)."""
    return os.environ.get("NATFAST_EXECUTOR", "1") != "0" and _ext.has_op("executor_forward")


def _graphs_enabled() -> bool:
    return os.environ.get("NATFAST_CUDA_GRAPHS", "1") != "0"


@dataclass(eq=False)
class ExecutorPlan:
    """One architecture bound to one supernet's parameters (held by reference, so optimiser steps
    are seen without recompiling)."""
    edges: torch.Tensor          # (layers, 2B, 3) int64: (op id, from, to)
    outputs: torch.Tensor        # (layers, B) int64: output nodes in concat order, -1 padded
    reduction_cells: List[int]
    params: List[torch.Tensor]
    _seen_shapes: set = field(default_factory=set)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the architecture on `x` (differentiable w.r.t. x and the parameters)."""
        if x.is_cuda and not torch.is_grad_enabled() and _graphs_enabled():
            return _replay_or_capture(self, x)
        return self._execute(x)

    def _execute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.natfast.executor_forward(x, self.edges, self.outputs, self.reduction_cells, self.params,
                                                  runs_cpu_kernels(x))


# The Python path's ops that the executor also runs on natfast's C++ CPU kernels.
_CPU_KERNEL_OPS = ("relu_dwconv", "conv1x1_bn", "cat_conv1x1_bn", "pool_bn", "group_batch_norm")


def runs_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether the executor runs natfast's C++ CPU kernels, as the Python path would; a backend
    forced for any of their ops (use_backend, NATFAST_BACKEND) gives ATen's ops instead."""
    return x.device.type == "cpu" and all(
        "cpu" in dispatch.registered(op) and dispatch.forced_backend(op) in (None, "cpu") for op in _CPU_KERNEL_OPS)


def _cell_params(cell, edges) -> List[torch.Tensor]:
    """pre0, pre1, then each non-null edge's op, in edge order; module registration order is the
    order the C++ side reads (SepConv: first.depthwise, first.pointwise, second.*; FactorizedReduce:
    conv_a, conv_b)."""
    params = list(cell.pre0.parameters()) + list(cell.pre1.parameters())
    for op, f, t in edges:
        if op != "null":
            params += list(cell.edges[edge_key(f, t)][op].parameters())
    return params


def _pack(supernet: Supernet, genotype: Genotype) -> ExecutorPlan:
    supernet._check_archs([genotype])
    b = supernet.family.num_nodes
    reductions = set(reduction_layers(supernet.layers))
    edges, outputs, params = [], [], list(supernet.stem.parameters())
    for index, cell in enumerate(supernet.cells):
        cell_edges = genotype.reduce if index in reductions else genotype.normal
        concat = genotype.reduce_concat if index in reductions else genotype.normal_concat
        if len(cell_edges) != 2 * b:
            raise ValueError(f"cell {index} has {len(cell_edges)} edges; the executor expects {2 * b}")
        edges.append([(OP_IDS[op], f, t) for op, f, t in cell_edges])
        outs = list(output_nodes(cell_edges, concat, supernet.family))
        outputs.append(outs + [-1] * (b - len(outs)))
        params += _cell_params(cell, cell_edges)
    params += [supernet.classifier.weight, supernet.classifier.bias]
    return ExecutorPlan(torch.tensor(edges, dtype=torch.int64), torch.tensor(outputs, dtype=torch.int64),
                        sorted(reductions), params)


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
