"""Flat parameters and the masked SGD step (natfast/flat_params.py, natfast.ops.masked_sgd): the
step of a sampled architecture updates exactly the parameters it read, as eager clip + SGD do."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from natfast.executor import parameters_read
from natfast.flat_params import FlatParameters, MaskedSGD
from natfast.genotype import get_family, normalize
from natfast.ops import dispatch, masked_sgd
from natfast.ops.backends import load_all
from natfast.sampler import sample_genotype
from natfast.supernet import Supernet

TRITON = load_all().get("triton", "").startswith("active") and (
    torch.cuda.is_available() or os.environ.get("NATFAST_TRITON_INTERPRET") == "1")


def _genotypes(family, count, seed):
    """Sampled cells with some edges made null: dead nodes, nodes with one input, unused cell inputs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        g = normalize(sample_genotype(family, gen))
        cells = {}
        for cell in ("normal", "reduce"):
            edges = list(getattr(g, cell))
            for i in torch.randperm(len(edges), generator=gen)[:int(torch.randint(0, 4, (1,), generator=gen))]:
                edges[i] = ("null",) + tuple(edges[i][1:])
            cells[cell] = edges
        out.append(g._replace(**cells))
    return out


def _batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)


@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_the_parameters_a_step_reads_are_those_eager_gives_a_gradient(family_name):
    family = get_family(family_name)
    torch.manual_seed(0)
    net = Supernet(family, 4, 3)
    x, y = _batch(1)
    for genotype in _genotypes(family, 12, seed=2):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, genotype), y).backward()
        with_grad = {id(p) for p in net.parameters() if p.grad is not None}
        read = {id(p) for p in parameters_read(net, genotype)}
        assert read == with_grad, f"{genotype}: read {len(read)}, with a gradient {len(with_grad)}"


def test_flat_parameters_are_views_that_survive_loading_and_backward():
    torch.manual_seed(0)
    net = Supernet(get_family("darts"), 4, 3)
    state = copy.deepcopy(net.state_dict())
    flat = FlatParameters(list(net.parameters()))
    for name, p in net.named_parameters():
        assert torch.equal(p, state[name]), name          # the values moved over unchanged
    net.load_state_dict(state)                            # copies into the views
    x, y = _batch(3)
    F.cross_entropy(net(x, _genotypes(get_family("darts"), 1, 4)[0]), y).backward()
    flat.check_views()
    assert flat.grad.abs().sum() > 0
    flat.zero_grad()
    assert not flat.grad.any()
    net.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="no longer a view"):
        flat.check_views()


# The Triton case is always collected: where the backend is inactive it skips and says so (CI's
# strict run fails on that skip) rather than quietly dropping out.
BACKENDS = ["reference", pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.skipif(
    not TRITON, reason="the Triton backend is not active (no GPU, NATFAST_TRITON_INTERPRET unset)")])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_masked_sgd_steps_as_eager_clip_and_sgd(family_name, backend):
    """Three steps of different architectures: every used parameter, its gradient and momentum buffer as
    eager's (float32 tolerance: the clip's norm is summed in another order); every unused one, and its
    buffer, bit for bit as before the step; a parameter first used in a later step starts its buffer then."""
    family = get_family(family_name)
    torch.manual_seed(0)
    eager_net = Supernet(family, 4, 3)
    flat_net = copy.deepcopy(eager_net)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=3e-4)
    eager_params = list(eager_net.parameters())
    eager_opt = torch.optim.SGD(eager_params, **hyper)
    flat = FlatParameters(list(flat_net.parameters()))
    sgd = MaskedSGD(flat, max_norm=0.5, **hyper)          # small: the clip acts
    for step, genotype in enumerate(_genotypes(family, 3, seed=5)):
        x, y = _batch(10 + step)
        eager_opt.zero_grad(set_to_none=True)
        F.cross_entropy(eager_net(x, genotype), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(eager_params, 0.5)
        assert norm > 0.5, "the clip should act in this test"
        eager_opt.step()

        before = [p.detach().clone() for p in flat.params], sgd.buf.clone()
        flat.zero_grad()
        F.cross_entropy(flat_net(x, genotype), y).backward()
        used = flat.used(parameters_read(flat_net, genotype))
        with dispatch.use_backend("auto", masked_sgd=backend), dispatch.recording() as served:
            sgd.step(used)
        assert served.get("masked_sgd") == {backend}

        buffers = sgd.momentum_buffers()
        for i, (e, f) in enumerate(zip(eager_params, flat.params)):
            if used[i]:
                # From the second step the copies' parameters differ in their last bits (the clip's
                # norm sums in another order), and the gradients inherit that: absolute tolerances at
                # 1e-6 of gradients and buffers of order 1e-2 to 1.
                torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(f.grad, e.grad, rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(buffers[i], eager_opt.state[e]["momentum_buffer"], rtol=1e-4, atol=1e-6)
            else:
                assert e.grad is None
                assert torch.equal(f, before[0][i]), f"step {step}: unused parameter {i} changed"
                start, size = flat.offsets[i], flat.sizes[i]
                assert torch.equal(sgd.buf[start:start + size], before[1][start:start + size])
                assert bool(sgd.started[i]) == (e in eager_opt.state)


def test_masked_sgd_names_bad_buffers():
    p = torch.randn(6)
    seg, flags = torch.zeros(6, dtype=torch.int32), torch.ones(1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="flat contiguous float32"):
        masked_sgd(p, torch.randn(5), torch.zeros(6), seg, flags, flags.clone(), lr=0.1)
    with pytest.raises(ValueError, match="segment_of must be int32"):
        masked_sgd(p, torch.randn(6), torch.zeros(6), seg.long(), flags, flags.clone(), lr=0.1)
    with pytest.raises(ValueError, match="uint8"):
        masked_sgd(p, torch.randn(6), torch.zeros(6), seg, flags.bool(), flags.clone(), lr=0.1)
