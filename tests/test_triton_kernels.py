"""Triton backend vs reference, forward and backward, on random inputs.

On CPU these run in Triton's interpreter: the environment must have TRITON_INTERPRET=1 and
NATFAST_TRITON_INTERPRET=1 *before* natfast (and so triton) is imported — set them in CI / conftest.
On a GPU machine (TRITON_INTERPRET unset) the same tests run the compiled kernels on CUDA tensors.
Shapes are tiny: the interpreter runs every program in Python.
"""
from __future__ import annotations

import os

import pytest
import torch

from natfast.ops import dispatch
from natfast.ops.backends import load_all

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRET and os.environ.get("NATFAST_TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 without NATFAST_TRITON_INTERPRET=1: the backend is not registered for CPU "
                "tensors", allow_module_level=True)
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET/NATFAST_TRITON_INTERPRET are not set (set both to 1 to run the "
                "Triton kernels in the CPU interpreter)", allow_module_level=True)
STATUS = load_all().get("triton", "")
if not STATUS.startswith("active"):
    pytest.skip(f"Triton backend {STATUS}", allow_module_level=True)

from natfast.ops import gcn_policy_logits  # noqa: E402
from natfast.ops.policy_sample import masked_sample  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, scale=1.0, shift=0.0, requires_grad=False):
    t = (torch.randn(*shape, generator=_gen(seed)) * scale + shift).to(DEVICE)
    return t.requires_grad_(requires_grad)


def run_both(op: str, fn, inputs, seed=99):
    """fn(*inputs) under the reference and the Triton backend; returns ([outputs], [input grads]) each.
    The backward uses the same random output gradient for both."""
    results = {}
    for backend in ("reference", "triton"):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) if torch.is_tensor(t) else t for t in inputs]
        with dispatch.use_backend("auto", **{op: backend}), dispatch.recording() as used:
            out = fn(*leaves)
        assert used.get(op) == {backend}, f"{op} under {backend} ran {used}"  # never a comparison with itself
        outs = out if isinstance(out, tuple) else (out,)
        diff = [o for o in outs if o.is_floating_point() and o.requires_grad]
        grads_out = [torch.randn(o.shape, generator=_gen(seed + i)).to(o) for i, o in enumerate(diff)]
        wrt = [t for t in leaves if torch.is_tensor(t) and t.requires_grad]
        grads = torch.autograd.grad(diff, wrt, grads_out) if diff and wrt else ()
        results[backend] = ([o.detach() for o in outs], list(grads))
    return results["reference"], results["triton"]


def assert_match(ref, fast, atol, rtol=1e-4):
    for r, f in zip(ref[0] + ref[1], fast[0] + fast[1]):
        assert r.shape == f.shape and r.dtype == f.dtype
        torch.testing.assert_close(f, r, atol=atol, rtol=rtol)
    assert len(ref[1]) == len(fast[1])


def test_backend_is_chosen():
    logits, mask = randn(3, 9), torch.ones(3, 9, dtype=torch.bool, device=DEVICE)
    with dispatch.use_backend("triton"):
        assert dispatch.resolve("masked_sample", DEVICE, logits, mask)[0] == "triton"


def _gcn_inputs(b, n, f, h, o, seed):
    adj = torch.rand(b, n, n, generator=_gen(seed)).to(DEVICE)
    x = randn(b, n, f, seed=seed + 1, requires_grad=True)
    params = [randn(f, h, seed=seed + 2, scale=0.3), randn(h, seed=seed + 3), randn(h, h + 1, seed=seed + 4, scale=0.3),
              randn(h + 1, seed=seed + 5), randn(h + 1, o, seed=seed + 6, scale=0.3), randn(o, seed=seed + 7)]
    return [adj, x] + [p.requires_grad_() for p in params]


@pytest.mark.parametrize("b,n,f,h,o", [(3, 6, 5, 7, 9), (13, 7, 16, 16, 18), (1, 6, 20, 33, 4)])
def test_gcn_policy_logits(b, n, f, h, o):
    ref, fast = run_both("gcn_policy_logits", gcn_policy_logits, _gcn_inputs(b, n, f, h, o, seed=20))
    assert_match(ref, fast, atol=1e-4, rtol=1e-4)


def test_gcn_policy_logits_single_graph():
    adj, x, *params = _gcn_inputs(1, 6, 8, 8, 5, seed=30)
    ref, fast = run_both("gcn_policy_logits", gcn_policy_logits, [adj[0], x[0].detach().requires_grad_()] + params)
    assert_match(ref, fast, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("greedy", [False, True])
def test_masked_sample(greedy):
    logits = randn(7, 2, 9, seed=40, scale=2.0, requires_grad=True)
    mask = (torch.rand(7, 2, 9, generator=_gen(41)) < 0.5).to(DEVICE)
    mask[..., 4] = True  # every edge may stay skip (as in NAT)
    mask[0, 0] = False
    mask[0, 0, 8] = True  # a row whose only allowed target is the last
    uniform = None if greedy else torch.rand(7, 2, generator=_gen(42)).to(DEVICE)
    ref, fast = run_both("masked_sample", lambda z: masked_sample(z, mask, uniform), [logits])
    assert torch.equal(ref[0][0], fast[0][0])
    assert bool(mask.gather(-1, fast[0][0].unsqueeze(-1)).all())
    assert_match(ref, fast, atol=1e-5)


def _low_precision_cases():
    """(op, fn, float32 inputs, indices of inputs that take no gradient) for every Triton op."""
    mask = torch.rand(7, 2, 9, generator=_gen(201)) < 0.5
    mask[..., 4] = True
    return [
        ("gcn_policy_logits", gcn_policy_logits, [t.detach() for t in _gcn_inputs(3, 6, 5, 7, 9, seed=213)], (0,)),
        ("masked_sample", lambda z: masked_sample(z, mask.to(DEVICE), None), [randn(7, 2, 9, seed=214, scale=2.0)], ()),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(2))
def test_low_precision_forward_and_backward(case, dtype):
    """Each Triton op in float16 and bfloat16, forward and backward, against the reference in float32
    on the same inputs (rounded to the dtype first, so only the kernel's own rounding differs).

    Tolerances from the dtype's rounding: the kernels read the dtype, compute in float32 and round each
    stored result once, at most eps/2 of its value (rtol = eps). Normalising ops (BN) also keep a
    normalised tensor in the dtype for the backward, whose mean subtractions cancel: their error is
    bounded by eps times the tensor's scale, not each value's (atol = 2 eps max|reference|)."""
    op, fn, inputs, no_grad = _low_precision_cases()[case]
    eps = torch.finfo(dtype).eps
    rounded = [t.to(dtype) for t in inputs]
    results = {}
    for backend, values in (("reference", [t.float() for t in rounded]), ("triton", rounded)):
        leaves = [t.detach().clone().requires_grad_(i not in no_grad) for i, t in enumerate(values)]
        with dispatch.use_backend("auto", **{op: backend}), dispatch.recording() as used:
            out = fn(*leaves)
        assert used.get(op) == {backend}
        outs = out if isinstance(out, tuple) else (out,)
        diff = [o for o in outs if o.is_floating_point() and o.requires_grad]
        grads_out = [torch.randn(o.shape, generator=_gen(300 + i)).to(DEVICE).to(dtype).to(o.dtype)
                     for i, o in enumerate(diff)]
        grads = torch.autograd.grad(diff, [t for t in leaves if t.requires_grad], grads_out)
        if backend == "triton":
            assert all(g.dtype == t.dtype for g, t in zip(grads, [t for t in leaves if t.requires_grad]))
        results[backend] = [o.detach().float() if o.is_floating_point() else o for o in outs] + [g.float() for g in grads]
    assert len(results["reference"]) == len(results["triton"])
    for ref, got in zip(results["reference"], results["triton"]):
        if not ref.is_floating_point():  # sampled actions: equal
            assert torch.equal(ref, got)
            continue
        torch.testing.assert_close(got, ref, rtol=eps, atol=2 * eps * ref.abs().max().item())
