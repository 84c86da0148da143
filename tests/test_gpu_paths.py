"""Whole paths on a CUDA GPU (run by bench/gpu_check.sh): multi-architecture batches against one
architecture at a time, and a search step end to end. (The comparison of the supernet's fast
kernels against the reference path is gone: the Triton relu_dwconv, pool2d and group_batch_norm
and then the CUDA C++ relu_dwconv, its last fast kernel on CUDA, were removed; the graph engine's
tests cover its own kernels.)"""
import tempfile

import pytest
import torch

from natfast.config import SearchConfig
from natfast.genotype import get_family
from natfast.sampler import sample_genotype
from natfast.search import Searcher, step_generator
from natfast.supernet import Supernet

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

# float32 on the GPU; a batch and its parts one at a time may sum in different orders (cuDNN, TF32).
TOL = dict(rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("concatenate", [False, True])
def test_multi_architecture_batch_equals_sequential(concatenate):
    torch.manual_seed(1)
    family = get_family("darts")
    net = Supernet(family, 8, 5).cuda()
    gen = torch.Generator().manual_seed(3)
    a, b = sample_genotype(family, gen), sample_genotype(family, gen)
    archs = [a, b, a, a._replace(reduce=b.reduce)]
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        batched = net.run([x], [(0, arch) for arch in archs], concatenate=concatenate)
        for arch, logits in zip(archs, batched):
            torch.testing.assert_close(logits, net(x, arch), **TOL)


def test_search_steps_run_on_the_gpu():
    with tempfile.TemporaryDirectory() as out:
        cfg = SearchConfig(out=out, batch_size=16, layers=5, channels=8, device="cuda", progress=False)
        s = Searcher(cfg, log=lambda _: None)
    x, y = next(iter(s.w_loader.epoch(0)))
    x, y = x.cuda(), y.cuda()
    before = [p.detach().clone() for p in s.supernet.parameters()]
    w_stats = s.update_w(x, y, step_generator(0, 0, 0))
    theta_stats = s.update_theta(x, y, step_generator(0, 0, 1))
    assert torch.isfinite(torch.tensor(w_stats["loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, s.supernet.parameters()))
    assert all(torch.isfinite(torch.tensor(v)) for v in theta_stats.values() if isinstance(v, float))
