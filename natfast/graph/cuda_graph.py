"""Capturing a function as a CUDA graph the way every captured step here does it.

The warm-up runs on a side stream (Triton compiles, cuDNN picks algorithms, the caching allocator
settles), as torch.cuda.graphs' documentation asks, so the capture itself allocates nothing new;
the captured call's outputs live in the graph's private pool and are overwritten by each replay.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch


def capture(fn: Callable[[], Any], warmup: int = 2) -> Tuple["torch.cuda.CUDAGraph", Any]:
    """(graph, outputs): fn() run `warmup` times on a side stream, then captured once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
