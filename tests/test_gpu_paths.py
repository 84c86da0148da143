"""Whole paths on a CUDA GPU (run by bench/gpu_check.sh): the supernet's default backends against
the reference path forward and backward, multi-architecture batches against one architecture at
a time, and a search step end to end."""
import tempfile

import pytest
import torch
import torch.nn.functional as F

from natfast.config import SearchConfig
from natfast.genotype import get_family
from natfast.ops import dispatch, dispatch_table
from natfast.sampler import sample_genotype
from natfast.search import Searcher, step_generator
from natfast.supernet import Supernet

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

# float32 on the GPU; the fast kernels sum in another order than cuDNN.
TOL = dict(rtol=2e-3, atol=2e-3)


@pytest.fixture
def exact_float32():
    """cuDNN and cuBLAS round float32 to TF32 by default on Ampere and later: at that precision two
    correct paths drift apart through the network, so whole-path comparisons turn it off."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def fast_kernels_everywhere(monkeypatch):
    """The measured table sends small CUDA ops to eager; the comparison wants the fast kernels: of
    the supernet's ops, only relu_dwconv has one on CUDA (the CUDA C++ kernel; the Triton relu_dwconv,
    pool2d and group_batch_norm were removed, the graph engine's tests cover its own kernels)."""
    if "cuda" not in dispatch.registered("relu_dwconv"):
        pytest.skip("the CUDA C++ kernels are not built: no fast kernel serves the supernet's ops on CUDA")
    monkeypatch.setattr(dispatch_table, "TABLE", {})


def _grads_of(net, x, arch, y, backend):
    net.zero_grad(set_to_none=True)
    with dispatch.use_backend(backend), dispatch.recording() as used:
        logits = net(x, arch)
        F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, used


def _relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_supernet_fast_path_equals_reference(family_name, exact_float32, fast_kernels_everywhere):
    torch.manual_seed(0)
    family = get_family(family_name)
    net = Supernet(family, 8, 5).cuda()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    for seed in range(3):
        arch = sample_genotype(family, torch.Generator().manual_seed(seed))
        fast_logits, fast, used = _grads_of(net, x, arch, y, "auto")
        assert any(names - {"reference"} for names in used.values()), f"no fast kernel ran: {used}"
        ref_logits, ref, _ = _grads_of(net, x, arch, y, "reference")
        torch.testing.assert_close(fast_logits, ref_logits, **TOL)
        assert fast.keys() == ref.keys()
        # Every parameter's gradient, all mismatches in one report (which ones drift tells where).
        errors = {name: _relative_error(fast[name], ref[name]) for name in ref}
        worst = {name: err for name, err in errors.items() if err > 1e-3}
        assert not worst, f"seed {seed}, backends {used}: gradients off (relative L2 error) {worst}"


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
