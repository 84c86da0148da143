"""The CUDA C++ kernels (csrc/cuda: the GCN policy's; the CUDA C++ relu_dwconv was removed) against
the reference path, forward and backward, and the compiled executor on CUDA (with CUDA-graph
replay). Run on a GPU by bench/gpu_check.sh."""
import random

import pytest
import torch

from natfast import executor
from natfast.genotype import NAMED, get_family
from natfast.ops import dispatch, dispatch_table
from natfast.ops.backends import cuda as cuda_backend
from natfast.ops.gcn import gcn_policy_logits_reference
from natfast.supernet import Supernet

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not cuda_backend._has_cuda_kernel("cuda_gcn_forward"),
                       reason="natfast._C was built without the CUDA kernels"),
]

# Summation-order differences of float32/float64 sums.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def grads(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs]


def gcn_inputs(graphs, nodes, dtype, features=64, hidden=64, outputs=26, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, generator=g) * 0.2
    adj = torch.rand(graphs, nodes, nodes, device="cuda", dtype=dtype, generator=g)
    return [adj, r(graphs, nodes, features), r(features, hidden), r(hidden), r(hidden, hidden), r(hidden),
            r(outputs, hidden).t(), r(outputs)]  # the policy passes head.weight.t(): non-contiguous


@pytest.mark.parametrize("graphs,nodes", [(1, 6), (7, 7), (64, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gcn_matches_reference(graphs, nodes, dtype):
    inputs = gcn_inputs(graphs, nodes, dtype)
    assert cuda_backend.gcn_policy_logits_limits(*inputs) is None
    grad_out = torch.randn(graphs, nodes, 26, device="cuda", dtype=dtype)
    expected = grads(gcn_policy_logits_reference, inputs, grad_out)
    got = grads(cuda_backend.gcn_policy_logits, inputs, grad_out)
    torch.testing.assert_close(got[0], expected[0], **TOL[dtype])
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_gcn_gradcheck():
    inputs = [t.requires_grad_(True) for t in gcn_inputs(2, 4, torch.float64, features=3, hidden=5, outputs=4)]
    assert torch.autograd.gradcheck(cuda_backend.gcn_policy_logits, inputs)


def test_dispatch_picks_cuda_for_supported_calls(monkeypatch):
    inputs = gcn_inputs(4, 6, torch.float32)
    monkeypatch.setattr(dispatch_table, "TABLE", {})  # the default order, before measured rules
    assert dispatch.resolve("gcn_policy_logits", "cuda", *inputs)[0] == "cuda"
    # The CUDA C++ relu_dwconv was removed: on CUDA it runs its reference.
    x, w = torch.randn(2, 4, 8, 8, device="cuda"), torch.randn(4, 1, 3, 3, device="cuda")
    assert dispatch.resolve("relu_dwconv", "cuda", x, w, 1, 1)[0] == "reference"


@pytest.mark.parametrize("name", ["DARTS", "ENAS", "NAT_DARTS", "NAONet_B"])
def test_executor_on_cuda_matches_supernet(name):
    genotype, family_name = NAMED[name]
    torch.manual_seed(0)
    net = Supernet(get_family(family_name), channels=8, layers=5).cuda().double()
    x = torch.randn(4, 3, 16, 16, device="cuda", dtype=torch.float64, requires_grad=True)
    with dispatch.use_backend("reference"):
        y_ref = net(x, genotype)
        gx_ref, = torch.autograd.grad(y_ref.sum(), x)
        plan = executor.compile_arch(net, genotype)
        y = plan.run(x)
        gx, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-9, atol=1e-9)


def test_cuda_graph_replay_matches_eager():
    genotype, _ = NAMED["DARTS"]
    net = Supernet(get_family("darts"), channels=8, layers=5).cuda()
    plan = executor.compile_arch(net, genotype)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(4):  # the first call runs eagerly, the second captures, later ones replay
            x = torch.randn(8, 3, 16, 16, device="cuda") * rng.uniform(0.5, 2)
            torch.testing.assert_close(plan.run(x), plan._execute(x), rtol=1e-5, atol=1e-5)
