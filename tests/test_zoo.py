"""The authors' zoo: every named architecture validates, draws, builds and costs what the authors'
own network and counting code give; the ops only their published architectures use."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from natfast.draw import draw
from natfast.flops import count
from natfast.genotype import ALL_PRIMITIVES, EVALUATION_PRIMITIVES, GenotypeError, get_family, get_named, validate
from natfast.network import Network
from natfast.ops import dispatch, make_op
from natfast.ops.depthwise import relu_dwconv
from natfast.ops.layers import EVALUATION_OPERATIONS, OPERATIONS
from natfast.supernet import Supernet
from natfast.zoo import NAMED

# Params and MAdds of each architecture as the authors' own code counts them: the evaluation
# networks of guoyongcs/NATv2 (commit e50c9ec, evaluate_model.py) NetworkCIFAR(C=36, 10 classes,
# 20 cells, auxiliary=True, genotype) and NetworkImageNet(C=48, 1000 classes, 14 cells,
# auxiliary=True, genotype), counted with that repository's utils.compute_nparam(model, "auxiliary")
# and utils.compute_flops(model, (1, 3, H, H), "auxiliary"), H = 32 and 224. Genotypes from
# NATv2's genotypes.py, R1-R5 and NAT_R1-NAT_R5 from guoyongcs/NAT's (commit 0c2c3c5). Run on a
# CPU with torch 2.14 (torchvision and graphviz, which those files import but the counting does not
# use, stubbed out).
#            name: (CIFAR-10 params, CIFAR-10 MAdds, ImageNet params, ImageNet MAdds)
AUTHORS_COSTS = {
    "DARTS": (3349342, 528353280, 4718752, 529143552),
    "NAT_DARTS": (2682334, 424175616, 3978784, 440181504),
    "NATv2_DARTS": (2476054, 394149888, 3723808, 412521984),
    "ENAS": (3859894, 605712384, 5625952, 607192320),
    "NAT_ENAS": (3859894, 605712384, 5625952, 607192320),
    "NATv2_ENAS": (3691414, 580829184, 5376736, 582392832),
    "ResBlock": (3797974, 548425728, 5007904, 571705344),
    "NAT_ResBlock": (3850678, 553734144, 5101216, 578930688),
    "NATv2_ResBlock": (3699910, 538306560, 4831072, 557762688),
    "VGG": (3797974, 548425728, 5007904, 571705344),
    "NAT_VGG": (3850678, 553734144, 5101216, 578930688),
    "NATv2_VGG": (2587078, 378058752, 3503200, 410772096),
    "Mobilenetv2": (1160614, 181647360, 1642528, 219300480),
    "NAT_MobileNetv2": (1186966, 184301568, 1689184, 222913152),
    "NATv2_MobileNetv2": (1186966, 184301568, 1689184, 222913152),
    "NAONet": (11463670, 1673809920, 14740384, 1626605568),
    "NAT_NAONet": (8284582, 1219940352, 10836064, 1203922944),
    "NATv2_NAONet": (8968006, 1322459136, 11637088, 1295368704),
    "R1": (3520198, 533938176, 5263264, 558872832),
    "NAT_R1": (2904598, 445575168, 4434976, 473448192),
    "R2": (2845846, 443308032, 4311328, 466316928),
    "NAT_R2": (2256598, 357599232, 3529696, 384504960),
    "R3": (5236966, 795156480, 7054624, 780299520),
    "NAT_R3": (2996182, 458293248, 4433824, 480598272),
    "R4": (8486254, 1248943104, 11120128, 1210724928),
    "NAT_R4": (5445622, 808925184, 7469536, 807601536),
    "R5": (5345182, 801017856, 7334944, 797102208),
    "NAT_R5": (5283190, 794520576, 7229248, 788663232),
}


def test_the_zoo_is_the_authors_whole_list():
    assert set(NAMED) == set(AUTHORS_COSTS) | {"NAONet_B"}


@pytest.mark.slow
@pytest.mark.parametrize("name", AUTHORS_COSTS)
def test_costs_equal_the_authors_counts(name):
    genotype, family = get_named(name)
    cifar = count(genotype, family, madds="authors")
    imagenet = count(genotype, family, madds="authors", dataset="imagenet")
    assert (cifar.params, cifar.madds, imagenet.params, imagenet.madds) == AUTHORS_COSTS[name]


@pytest.mark.parametrize("name", ["DARTS", "ResBlock", "NAONet"])
def test_cifar_costs_equal_the_authors_counts(name):
    """The fast subset of the table above (CIFAR-10 only), run without the slow marker."""
    genotype, family = get_named(name)
    cost = count(genotype, family, madds="authors")
    assert (cost.params, cost.madds) == AUTHORS_COSTS[name][:2]


def test_the_two_madds_conventions():
    """Executed MAdds add the classifier and drop what never runs: ResBlock's cells read input 0
    only through null edges, so no cell's preprocessing of input 0 runs."""
    darts, family = get_named("DARTS")
    assert count(darts, family).madds == count(darts, family, madds="authors").madds + 4 * 144 * 10
    resblock, family = get_named("ResBlock")
    executed, authors = count(resblock, family), count(resblock, family, madds="authors")
    assert executed.params == authors.params
    # Input 0's preprocessing per cell (C = 36, 20 cells, reductions at 6 and 13, every cell's
    # output one node): 1x1 convs from the 108-channel stem (cells 0, 1), within the stage
    # (2-5, 8-12, 15-19), onto the doubled width (reductions 6, 13), and the factorized
    # reductions after a reduction (7, 14: two 1x1 convs of half the width at half the size).
    unused = (2 * 108 * 36 * 32 * 32 + 4 * 36 * 36 * 32 * 32 + 36 * 72 * 32 * 32 + 2 * 36 * 36 * 16 * 16
              + 5 * 72 * 72 * 16 * 16 + 72 * 144 * 16 * 16 + 2 * 72 * 72 * 8 * 8 + 5 * 144 * 144 * 8 * 8)
    assert executed.madds == authors.madds - unused + 144 * 10
    with pytest.raises(ValueError, match="MAdds convention must be one of executed, authors"):
        count(darts, family, madds="paper")


@pytest.mark.slow
def test_every_named_architecture_validates_and_draws(tmp_path):
    rows = []
    for name, (genotype, family_name) in NAMED.items():
        family = get_family(family_name)
        assert validate(genotype, family) == genotype
        rows.append((name, genotype, family))
    path = draw(rows, str(tmp_path / "zoo.png"))
    assert (tmp_path / "zoo.png").stat().st_size > 10_000 and path.endswith("zoo.png")


@pytest.mark.parametrize("name", ["NAONet", "NATv2_NAONet", "Mobilenetv2", "R4", "NATv2_ENAS"])
def test_zoo_networks_train_a_step(name):
    genotype, family = get_named(name)
    torch.manual_seed(0)
    net = Network(genotype, family, channels=8, layers=5, auxiliary=True).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == (4, 10) and aux.shape == (4, 10)
    (F.cross_entropy(logits, y) + F.cross_entropy(aux, y)).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # Every op of these cells reaches the output (an input read only by null edges does not).
    assert all(p.grad is not None for cell in net.cells for p in cell.ops.parameters())


def test_naonet_family_is_for_evaluation_only():
    _, family = get_named("NAONet")
    assert family.name == "enas-eval" and not family.searchable and family.loose_end
    assert set(EVALUATION_PRIMITIVES) <= set(family.primitives) == set(ALL_PRIMITIVES)
    assert get_family("darts-eval").num_nodes == 4 and get_family("DARTS").searchable
    with pytest.raises(GenotypeError, match="unknown family 'nao-eval'"):
        get_family("nao-eval")
    with pytest.raises(ValueError, match="family enas-eval is for standalone networks only"):
        Supernet(family, channels=4, layers=3)


# ----------------------------------------------------------------------------- the authors' extra ops
def test_evaluation_ops_are_outside_the_supernet_op_enum():
    assert EVALUATION_OPERATIONS == EVALUATION_PRIMITIVES
    assert not set(EVALUATION_OPERATIONS) & set(OPERATIONS)


def _authors_factorized(c, k, stride):
    """The authors' conv_1xk_kx1, written with torch.nn modules."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False),
                         nn.Conv2d(c, c, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
                         nn.BatchNorm2d(c))


@pytest.mark.parametrize("name, k", [("conv_1x3_3x1", 3), ("conv_1x7_7x1", 7), ("conv_7x1_1x7", 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_factorized_convs_match_nn_modules(name, k, stride):
    torch.manual_seed(0)
    op = make_op(name, 6, stride, affine=True, pool_bn=False).train()
    ref = _authors_factorized(6, k, stride).train()
    with torch.no_grad():
        ref[1].weight.copy_(op.row)
        ref[2].weight.copy_(op.column)
    x = torch.randn(3, 6, 11, 11, dtype=torch.float64)
    op, ref = op.double(), ref.double()
    torch.testing.assert_close(op(x), ref(x), rtol=1e-10, atol=1e-10)
    assert sum(p.numel() for p in op.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_unpadded_pools_halve_even_maps_only(kind):
    op = make_op(f"{kind}_pool_2x2", 4, 2, affine=True, pool_bn=False)
    x = torch.randn(2, 4, 8, 6)
    expected = F.max_pool2d(x, 2) if kind == "max" else F.avg_pool2d(x, 2)
    torch.testing.assert_close(op(x), expected)
    with pytest.raises(ValueError, match=f"{kind}_pool_2x2 needs even feature maps.*7x7"):
        op(torch.randn(1, 4, 7, 7))
    with pytest.raises(ValueError, match=f"{kind}_pool_2x2 has no padding: it fits only stride-2 edges"):
        make_op(f"{kind}_pool_2x2", 4, 1, affine=True, pool_bn=False)


@pytest.mark.parametrize("name, kernel, dilation", [("sep_conv_1x1", 1, 1), ("sep_conv_7x7", 7, 1),
                                                     ("dil_conv_1x1", 1, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_new_sep_and_dil_convs_match_the_reference_path(name, kernel, dilation, stride):
    """On the dispatched kernels (the C++ CPU one where built) and on the reference path alike;
    the depthwise kernel of a k = 1 or 7 op has the size and padding the authors give it."""
    torch.manual_seed(0)
    op = make_op(name, 6, stride, affine=True, pool_bn=False).train()
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    y = op(x)
    gx, = torch.autograd.grad(y.square().sum(), x)
    with dispatch.use_backend("reference"):
        y_ref = op(x)
        gx_ref, = torch.autograd.grad(y_ref.square().sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-3, atol=1e-3)
    assert y.shape == (2, 6, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
    first = op.first if name.startswith("sep") else op
    assert first.depthwise.shape == (6, 1, kernel, kernel) and first.dilation == dilation


@pytest.mark.parametrize("kernel", [1, 7])
def test_relu_dwconv_kernel_sizes_of_the_zoo_on_every_backend(kernel):
    x = torch.randn(2, 5, 10, 10, requires_grad=True)
    w = torch.randn(5, 1, kernel, kernel, requires_grad=True)
    y = relu_dwconv(x, w, 2, 1)
    with dispatch.use_backend("reference"):
        y_ref = relu_dwconv(x, w, 2, 1)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.sum(), (x, w))
    g_ref = torch.autograd.grad(y_ref.sum(), (x, w))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
