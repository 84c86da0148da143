"""Whole paths on a CUDA GPU (run by bench/gpu_check.sh): the supernet's default backends against
the reference path forward and backward, multi-architecture batches against one architecture at
a time, and a search step end to end."""
import tempfile

import pytest
import torch
import torch.nn.functional as F

from natfast.config import SearchConfig
from natfast.genotype import get_family
from natfast.ops import dispatch
from natfast.sampler import sample_genotype
from natfast.search import Searcher, step_generator
from natfast.supernet import Supernet

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

# float32 on the GPU; the fast kernels sum in another order than cuDNN.
TOL = dict(rtol=2e-3, atol=2e-3)


def _grads_of(net, x, arch, y, backend):
    net.zero_grad(set_to_none=True)
    with dispatch.use_backend(backend):
        logits = net(x, arch)
        F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_supernet_fast_path_equals_reference(family_name):
    torch.manual_seed(0)
    family = get_family(family_name)
    net = Supernet(family, 8, 5).cuda()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    for seed in range(3):
        arch = sample_genotype(family, torch.Generator().manual_seed(seed))
        fast_logits, fast = _grads_of(net, x, arch, y, "auto")
        ref_logits, ref = _grads_of(net, x, arch, y, "reference")
        torch.testing.assert_close(fast_logits, ref_logits, **TOL)
        assert fast.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(fast[name], ref[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


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
