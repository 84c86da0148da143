"""The compiled sampled-path executor equals `Supernet.forward` on plain PyTorch, forward and backward,
for random architectures of both families (null edges, repeated edges, partial and reordered concats,
loose ends, dead nodes), in float64 and float32, with ATen's ops (reference backend) and with
natfast's C++ CPU kernels (the default)."""
import random

import pytest
import torch

from natfast import executor
from natfast.genotype import NAMED, Genotype, get_family
from natfast.ops import dispatch
from natfast.supernet import Supernet

pytestmark = pytest.mark.skipif(not executor.available(),
                                reason="natfast._C without natfast::executor_forward (extension not built)")


def random_cell(family, rng: random.Random):
    edges = []
    for t in range(2, family.num_nodes + 2):
        for _ in range(2):
            op = "null" if rng.random() < 0.2 else rng.choice([p for p in family.primitives if p != "null"])
            edges.append((op, rng.randrange(t), t))
    if rng.random() < 0.2:  # the same op twice on the same edge (as in NAONet_B)
        edges[-1] = edges[-2]
    return edges


def random_genotype(family, rng: random.Random) -> Genotype:
    nodes = list(range(2, family.num_nodes + 2))

    def concat():
        return rng.sample(nodes, rng.randint(1, len(nodes)))  # any non-empty subset, any order

    return Genotype(normal=random_cell(family, rng), normal_concat=concat(),
                    reduce=random_cell(family, rng), reduce_concat=concat())


def param_grads(net):
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def forward_backward(net, run, x):
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    logits = run(x)
    (logits * torch.linspace(-1, 1, logits.numel(), dtype=x.dtype).view_as(logits)).sum().backward()
    return logits.detach(), x.grad, param_grads(net)


def assert_same(net, genotype, x, tol, backend="reference"):
    """The executor under `backend` (natfast's CPU kernels for "auto") against the Python path on plain
    PyTorch, forward and backward."""
    with dispatch.use_backend("reference"):
        expected = forward_backward(net, lambda inp: net(inp, genotype), x)
    with dispatch.use_backend(backend):
        plan = executor.compile_arch(net, genotype)
        assert executor.runs_cpu_kernels(x) == (backend == "auto")
        got = forward_backward(net, plan.run, x)
    torch.testing.assert_close(got[0], expected[0], **tol)
    torch.testing.assert_close(got[1], expected[1], **tol)
    assert got[2].keys() == expected[2].keys(), "the executor touched other parameters than the Python path"
    for name in expected[2]:
        # A weight gradient sums many products whose order differs between the two sides, so its
        # rounding scales with the gradient's largest entry, not with each (possibly tiny) entry.
        scale = max(1.0, expected[2][name].abs().max().item())
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


FAMILIES = ["darts", "enas", "darts++", "enas++"]
# float32: natfast's kernels sum in other orders than oneDNN (Winograd, natfast's GEMM), through 5
# cells of BN, which divides by each batch's std: input-gradient differences up to 1e-4 were seen.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_random_architectures(family_name, dtype, backend):
    family = get_family(family_name)
    rng = random.Random(f"{family_name}-{dtype}")
    torch.manual_seed(0)
    net = Supernet(family, channels=4, layers=5).to(dtype)
    x = torch.randn(3, 3, 12, 12, dtype=dtype)  # 12 -> 6 -> 3: the last cells run on an odd size
    for _ in range(4):
        assert_same(net, random_genotype(family, rng), x, TOL[dtype], backend)


def test_cpu_kernels_follow_the_backend_choice():
    """The executor runs natfast's CPU kernels exactly when the Python path would."""
    x = torch.randn(2, 3, 8, 8)
    expected = "cpu" in dispatch.registered("conv1x1_bn")
    assert executor.runs_cpu_kernels(x) == expected
    with dispatch.use_backend("reference"):
        assert not executor.runs_cpu_kernels(x)
    with dispatch.use_backend("auto", pool_bn="reference"):
        assert not executor.runs_cpu_kernels(x)


@pytest.mark.parametrize("name", sorted(n for n, (_, family) in NAMED.items() if get_family(family).searchable))
def test_named_architectures(name):
    genotype, family_name = NAMED[name]
    torch.manual_seed(1)
    net = Supernet(get_family(family_name), channels=4, layers=3).double()
    assert_same(net, genotype, torch.randn(2, 3, 8, 8, dtype=torch.float64), TOL[torch.float64])


def test_all_outputs_dead_gives_the_bias():
    """Every edge null: the cells output known zeros and the logits are the classifier's bias."""
    family = get_family("darts")
    cell = [("null", 0, t) for t in range(2, 6) for _ in range(2)]
    genotype = Genotype(normal=cell, normal_concat=[2, 3, 4, 5], reduce=cell, reduce_concat=[2, 3, 4, 5])
    net = Supernet(family, channels=4, layers=3).double()
    assert_same(net, genotype, torch.randn(2, 3, 8, 8, dtype=torch.float64), TOL[torch.float64])


def test_conv_3x3_by_winograd_on_both_sides():
    """Every edge conv_3x3, float32, natfast's kernels: on even sizes both sides run Winograd's
    F(2x2, 3x3) for the stride-1 convolutions (forward and input gradient), oneDNN elsewhere."""
    family = get_family("darts")
    cell = [("conv_3x3", f, t) for t in range(2, 6) for f in (t - 2, t - 1)]
    genotype = Genotype(normal=cell, normal_concat=[2, 3, 4, 5], reduce=cell, reduce_concat=[2, 3, 4, 5])
    torch.manual_seed(3)
    net = Supernet(family, channels=6, layers=3)
    assert_same(net, genotype, torch.randn(3, 3, 16, 16), TOL[torch.float32], "auto")


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_batch_of_one(backend):
    family = get_family("enas")
    torch.manual_seed(2)
    net = Supernet(family, channels=4, layers=3).double()
    genotype = random_genotype(family, random.Random(7))
    assert_same(net, genotype, torch.randn(1, 3, 8, 8, dtype=torch.float64), TOL[torch.float64], backend)


def test_plans_are_cached_and_follow_parameter_updates():
    family = get_family("darts")
    net = Supernet(family, channels=4, layers=3).double()
    genotype, _ = NAMED["DARTS"]
    plan = executor.compile_arch(net, genotype)
    assert executor.compile_arch(net, genotype) is plan
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = plan.run(x)
        net.classifier.bias.add_(1.0)  # an optimiser step updates parameters in place
        torch.testing.assert_close(plan.run(x), before + 1.0)


def test_rejects_an_architecture_of_another_family():
    net = Supernet(get_family("darts"), channels=4, layers=3)
    genotype, _ = NAMED["ENAS"]
    with pytest.raises(ValueError):
        executor.compile_arch(net, genotype)
