"""pytest-benchmark timings of natfast's GPU kernels vs eager on a GPU (skipped without CUDA):
    pytest bench/test_bench_gpu.py --benchmark-only
"""
import pytest
import torch

from natfast.ops import dispatch, gcn_policy_logits, relu_dwconv

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def _timed(benchmark, fn, op, backend):
    def run():
        fn()
        torch.cuda.synchronize()
    with dispatch.recording() as used:
        run()  # compile outside the timing
    assert used.get(op) == {backend}, f"timing {op} under {backend} would time {used}"
    benchmark(run)


@pytest.mark.parametrize("backend", ["reference", "cuda"])   # (the Triton relu_dwconv was removed)
@pytest.mark.parametrize("batch", [64, 256])
def test_relu_dwconv_fwd_bwd(benchmark, backend, batch):
    if backend not in dispatch.registered("relu_dwconv"):
        pytest.skip(f"no {backend} relu_dwconv here (the CUDA C++ kernels are not built)")
    x = torch.randn(batch, 16, 32, 32, device="cuda", requires_grad=True)
    w = torch.randn(16, 1, 3, 3, device="cuda", requires_grad=True)

    def step():
        with dispatch.use_backend("auto", relu_dwconv=backend):
            y = relu_dwconv(x, w, 1, 1)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
    _timed(benchmark, step, "relu_dwconv", backend)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_gcn_policy_1024_cells(benchmark, backend):
    adj = torch.rand(1024, 6, 6, device="cuda")
    x = torch.randn(1024, 6, 64, device="cuda", requires_grad=True)
    params = [torch.randn(64, 64, device="cuda"), torch.zeros(64, device="cuda"), torch.randn(64, 64, device="cuda"),
              torch.zeros(64, device="cuda"), torch.randn(64, 18, device="cuda"), torch.zeros(18, device="cuda")]
    params = [p.requires_grad_() for p in params]

    def step():
        with dispatch.use_backend("auto", gcn_policy_logits=backend):
            out = gcn_policy_logits(adj, x, *params)
        out.sum().backward()
    _timed(benchmark, step, "gcn_policy_logits", backend)
