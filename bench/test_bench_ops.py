"""pytest-benchmark timings of the CPU ops and op modules, fast path vs reference, at the search
shapes (the same cases as `natfast bench ops`):
    pytest bench/test_bench_ops.py --benchmark-only --benchmark-group-by=param:case
"""
import functools

import pytest
import torch

from natfast.benchmarks.ops import GROUPS, fwd_bwd_step
from natfast.ops import dispatch

BATCH = 64


@functools.lru_cache(maxsize=None)
def _cases(group: str):
    return {name: (fn, inputs) for name, fn, inputs, _ in GROUPS[group](BATCH)}


def _names(group: str):
    # Case names without building the tensors: the same loops at batch 1.
    return [name for name, *_ in GROUPS[group](1)]


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("group,case", [(g, n) for g in GROUPS for n in _names(g)])
def test_fwd_bwd(benchmark, group, case, backend):
    fn, inputs = _cases(group)[case]
    step = fwd_bwd_step(fn, inputs)
    with dispatch.use_backend(backend):
        benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    benchmark.extra_info["threads"] = torch.get_num_threads()
