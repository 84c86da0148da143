"""pytest-benchmark timings of natfast's GPU kernels vs eager on a GPU (skipped without CUDA):
    pytest bench/test_bench_gpu.py --benchmark-only
(relu_dwconv is no longer timed here: its Triton and CUDA C++ kernels were removed.)
"""
import pytest
import torch

from natfast.ops import dispatch, gcn_policy_logits

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def _timed(benchmark, fn, op, backend):
    def run():
        fn()
        torch.cuda.synchronize()
    with dispatch.recording() as used:
        run()  # compile outside the timing
    assert used.get(op) == {backend}, f"timing {op} under {backend} would time {used}"
    benchmark(run)


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
