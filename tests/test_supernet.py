"""The supernet engine: sampled path == standalone network, pruning, multi-architecture batches."""
import pytest
import torch

from natfast import _ext
from natfast.genotype import FAMILIES, Genotype, get_family
from natfast.network import network_from_supernet
from natfast.ops import fused
from natfast.ops.dispatch import use_backend
from natfast.sampler import sample_genotype
from natfast.supernet import Supernet, edge_key

FWD_TOL = dict(rtol=1e-9, atol=1e-9)     # float64: only summation order may differ
GRAD_TOL = dict(rtol=1e-7, atol=1e-9)


def _supernet(family_name, natpp=False, channels=4, layers=5, seed=0):
    torch.manual_seed(seed)
    return Supernet(get_family(family_name, natpp), channels, layers).double()


def _with_nulls(g: Genotype, every: int = 3) -> Genotype:
    cell = lambda edges: [("null", f, t) if i % every == 1 else (op, f, t) for i, (op, f, t) in enumerate(edges)]
    return g._replace(normal=cell(g.normal), reduce=cell(g.reduce))


@pytest.mark.parametrize("family_name,natpp", [("darts", False), ("enas", False), ("darts", True)])
@pytest.mark.parametrize("nulls", [False, True])
def test_sampled_path_equals_standalone_network(family_name, natpp, nulls):
    sn = _supernet(family_name, natpp)
    gen = torch.Generator().manual_seed(3)
    arch = sample_genotype(sn.family, gen)
    arch = _with_nulls(arch) if nulls else arch
    net = network_from_supernet(sn, arch).double()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = sn(x1, arch), net(x2)
    torch.testing.assert_close(y1, y2, **FWD_TOL)
    w = torch.randn(y1.shape, dtype=torch.float64, generator=gen)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **GRAD_TOL)
    # Every used op's weight gradient: the network's copies summed onto the shared weights.
    for cell, scell in zip(net.cells, sn.cells):
        expected = {}
        for j, (op, f, t) in enumerate(cell.edges):
            if op == "null":
                continue
            for name, p in cell.ops[str(j)].named_parameters():
                key = (edge_key(f, t), op, name)
                expected[key] = expected.get(key, 0) + p.grad
        for (ek, op, name), g in expected.items():
            shared = dict(scell.edges[ek][op].named_parameters())[name]
            torch.testing.assert_close(shared.grad, g, **GRAD_TOL)
    torch.testing.assert_close(sn.stem.conv.weight.grad, net.stem.conv.weight.grad, **GRAD_TOL)


def _count_calls(sn, stem: bool = False):
    calls = {}

    def hook(name):
        def fn(module, args, out):
            calls[name] = calls.get(name, 0) + 1
        return fn
    for ci, cell in enumerate(sn.cells):
        for ek, ops in cell.edges.items():
            for op, m in ops.items():
                m.register_forward_hook(hook((ci, ek, op)))
        cell.pre0.register_forward_hook(hook((ci, "pre0")))
        cell.pre1.register_forward_hook(hook((ci, "pre1")))
    if stem:
        sn.stem.register_forward_hook(hook(("stem",)))
    return calls


def test_null_edges_and_dead_nodes_run_no_op():
    sn = _supernet("darts", layers=1)          # one (reduction-free) normal cell... layers=1 -> no reduction
    # node 3 is dead (not in concat, nobody uses it); node 4 is zero (both inputs null),
    # so the edge 4 -> 5 is skipped too.
    cell = [("sep_conv_3x3", 0, 2), ("null", 1, 2), ("max_pool_3x3", 0, 3), ("conv_3x3", 1, 3),
            ("null", 0, 4), ("null", 1, 4), ("skip_connect", 4, 5), ("dil_conv_3x3", 2, 5)]
    arch = Genotype(cell, [2, 5], cell, [2, 5])
    calls = _count_calls(sn)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = sn(x, arch)
    assert calls == {(0, "pre0"): 1, (0, "0_2", "sep_conv_3x3"): 1, (0, "2_5", "dil_conv_3x3"): 1}
    # ... and skipping them changes nothing: the standalone network runs the zero node explicitly.
    torch.testing.assert_close(y, network_from_supernet(sn, arch).double()(x), **FWD_TOL)


def test_unused_input_is_not_preprocessed():
    sn = _supernet("darts", layers=1)
    cell = [("sep_conv_3x3", 0, 2), ("skip_connect", 0, 2), ("avg_pool_3x3", 2, 3), ("skip_connect", 0, 3),
            ("sep_conv_5x5", 3, 4), ("skip_connect", 2, 4), ("skip_connect", 4, 5), ("max_pool_3x3", 0, 5)]
    calls = _count_calls(sn)
    sn(torch.randn(2, 3, 8, 8, dtype=torch.float64), Genotype(cell, [2, 3, 4, 5], cell, [2, 3, 4, 5]))
    assert (0, "pre1") not in calls and calls[(0, "pre0")] == 1


def _archs_for_sharing(family, gen):
    a, b, c = (sample_genotype(family, gen) for _ in range(3))
    last_cell_differs = a._replace(normal=b.normal)  # normal cells differ: every normal cell
    only_reduce = a._replace(reduce=c.reduce)        # differs from cell L/3 on
    return [a, b, a, last_cell_differs, only_reduce, _with_nulls(c)]


# concatenate=True is the GPU default (one call per op over all distinct inputs, per-group BN).
@pytest.mark.parametrize("concatenate", [False, True])
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_shared_batch_equals_sequential(family_name, concatenate):
    sn = _supernet(family_name, layers=4)
    gen = torch.Generator().manual_seed(5)
    archs = _archs_for_sharing(sn.family, gen)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen)
    batched = sn.run([x], [(0, a) for a in archs], concatenate=concatenate)
    for arch, y in zip(archs, batched):
        torch.testing.assert_close(y, sn(x, arch), **FWD_TOL)


def _skips_everywhere(g: Genotype) -> Genotype:
    return g._replace(normal=[("skip_connect", f, t) for _, f, t in g.normal])


def _other_op_on_edge(g: Genotype, family, index: int) -> Genotype:
    op, f, t = g.normal[index]
    other = next(p for p in family.primitives if p not in (op, "null"))
    return g._replace(normal=[(other, f, t) if i == index else e for i, e in enumerate(g.normal)])


# When scoring, a node's sum is written into one of its edges' outputs where nothing else reads
# that output; skips (which return their input) and outputs that several lanes' sums read must
# stay intact. The standalone networks sum out of place, so they are the check.
@pytest.mark.parametrize("concatenate", [False, True])
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_scoring_sums_nodes_in_place_and_equals_standalone_networks(family_name, concatenate):
    sn = _supernet(family_name, layers=4)
    gen = torch.Generator().manual_seed(11)
    a = sample_genotype(sn.family, gen)
    archs = _archs_for_sharing(sn.family, gen) + [
        _skips_everywhere(a), _other_op_on_edge(a, sn.family, 1), _other_op_on_edge(a, sn.family, 0)]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen)
    with torch.inference_mode():
        batched = sn.run([x], [(0, g) for g in archs], concatenate=concatenate)
        again = sn.run([x], [(0, g) for g in archs], concatenate=concatenate)
    for arch, y, y2 in zip(archs, batched, again):
        with torch.no_grad():
            expected = network_from_supernet(sn, arch).double()(x)
        torch.testing.assert_close(y, expected, **FWD_TOL)
        torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_node_sum_writes_only_into_a_reusable_input():
    from natfast.engine import RunContext, Value
    ctx = RunContext()
    a, b, c = (Value(i, torch.randn(2, 3, 4, 4), 2) for i in range(3))
    a0, b0, c0 = a.tensor.clone(), b.tensor.clone(), c.tensor.clone()
    kept = ctx.node_sum([a, b], 2)                         # nothing reusable: a new tensor
    assert kept.tensor is not a.tensor and kept.tensor is not b.tensor
    torch.testing.assert_close(kept.tensor, a0 + b0, rtol=0, atol=0)
    into_second = ctx.node_sum([b, c], 2, reusable={2})    # either of two may hold it
    assert into_second.tensor is c.tensor
    torch.testing.assert_close(c.tensor, b0 + c0, rtol=0, atol=0)
    torch.testing.assert_close(b.tensor, b0, rtol=0, atol=0)
    d = Value(3, torch.randn(2, 3, 4, 4), 2)
    e = Value(4, torch.randn(2, 3, 4, 4), 2)
    d0 = d.tensor.clone()
    three = ctx.node_sum([d, e, a], 2, reusable={4})       # of three, only the first: same order
    assert three.tensor is not e.tensor
    torch.testing.assert_close(three.tensor, (d0 + e.tensor) + a0, rtol=0, atol=0)


@pytest.mark.parametrize("lanes_at_once", [1, 2, 4, 100])
def test_lanes_run_a_few_at_a_time_and_duplicates_once(lanes_at_once):
    sn = _supernet("darts", layers=4)
    gen = torch.Generator().manual_seed(9)
    archs = _archs_for_sharing(sn.family, gen)          # holds a duplicate (a twice)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen)
    calls = _count_calls(sn, stem=True)
    batched = sn.run([x], [(0, a) for a in archs], lanes_at_once=lanes_at_once)
    assert calls[("stem",)] == 1                         # one stem for every chunk of lanes
    # and one preprocessing of it by each cell that reads it (cells 0 and 1), not one per chunk
    assert calls[(0, "pre0")] == calls[(0, "pre1")] == calls[(1, "pre0")] == 1
    assert batched[0] is batched[2]                      # the duplicate lane ran once
    for arch, y in zip(archs, batched):
        torch.testing.assert_close(y, sn(x, arch), **FWD_TOL)


def test_prefix_sharing_computes_shared_cells_once():
    sn = _supernet("darts", layers=3)            # cells: normal, reduce(1), reduce(2)
    gen = torch.Generator().manual_seed(1)
    a = sample_genotype(sn.family, gen)
    b = a._replace(reduce=sample_genotype(sn.family, gen).reduce)   # differs from cell 1 on
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    calls = _count_calls(sn)
    sn.forward_shared(x, [a])
    alone = dict(calls)
    calls.clear()
    sn.forward_shared(x, [a, b, a])
    # Cell 0 is identical for all three and fed the same stem: each of its ops runs once, as for one.
    assert {k: v for k, v in calls.items() if k[0] == 0} == {k: v for k, v in alone.items() if k[0] == 0}
    # Cell 1 differs between a and b: its ops run for both (one batched call per op each).
    assert sum(v for k, v in calls.items() if k[0] == 1) > sum(v for k, v in alone.items() if k[0] == 1)


@pytest.mark.parametrize("concatenate,lanes_at_once", [(False, None), (False, 1), (True, None)])
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_routed_batch_equals_each_group_alone(family_name, concatenate, lanes_at_once):
    sn = _supernet(family_name, layers=4)
    gen = torch.Generator().manual_seed(7)
    archs = [sample_genotype(sn.family, gen) for _ in range(3)]
    sizes = [2, 3, 2]
    x = torch.randn(sum(sizes), 3, 8, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.cat(sn.run(list(torch.split(x, sizes)), list(enumerate(archs)), concatenate=concatenate,
                         lanes_at_once=lanes_at_once))
    start = 0
    for arch, n in zip(archs, sizes):
        torch.testing.assert_close(y[start:start + n], sn(x[start:start + n], arch), **FWD_TOL)
        start += n
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_arch_that_does_not_fit_is_rejected():
    sn = _supernet("darts", layers=2)
    enas_like = sample_genotype(FAMILIES["enas"], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="does not fit this supernet"):
        sn(torch.randn(2, 3, 8, 8, dtype=torch.float64), enas_like)


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 8), (3, 8, 8), (0, 3, 8, 8)])
def test_wrong_input_shape_is_a_clear_error(shape):
    sn = _supernet("darts", layers=2)
    arch = sample_genotype(sn.family, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"expected a batch of RGB images shaped \(N, 3, H, W\)"):
        sn(torch.randn(*shape, dtype=torch.float64), arch)
    with pytest.raises(ValueError, match="expected a batch of RGB images"):
        network_from_supernet(sn, arch)(torch.randn(*shape, dtype=torch.float64))


@pytest.mark.parametrize("images,match", [
    (torch.randint(0, 255, (2, 3, 8, 8)), "images must be floating point"),
    (torch.randn(2, 3, 8, 8, dtype=torch.float32), "images are torch.float32 but the model's weights are torch.float64"),
])
def test_images_of_another_dtype_are_a_clear_error(images, match):
    sn = _supernet("darts", layers=2)          # float64
    arch = sample_genotype(sn.family, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        sn(images, arch)
    with pytest.raises(ValueError, match=match):
        network_from_supernet(sn, arch).double()(images)


def test_an_architecture_that_is_not_a_genotype_is_a_clear_error():
    sn = _supernet("darts", layers=2)
    with pytest.raises(TypeError, match="must be a Genotype, got str"):
        sn(torch.randn(2, 3, 8, 8, dtype=torch.float64), "DARTS")


@pytest.mark.skipif(not _ext.has_op("cpu_conv1x1_bn_forward_each"), reason="needs natfast._C's CPU kernels")
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_scoring_reads_a_cell_output_once_for_both_cells_that_preprocess_it(family_name, monkeypatch):
    """Scoring on a CPU: input 1's preprocessing and the next cell's input 0's run as one pass over
    the cell output they share; the logits equal the reference path's, one architecture at a time.
    Under autograd (training) the two stay separate."""
    sn = _supernet(family_name, layers=5)        # reductions at cells 1 and 3
    gen = torch.Generator().manual_seed(21)
    archs = _archs_for_sharing(sn.family, gen)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen)
    passes = []
    each = fused.cat_conv1x1_bn_each
    monkeypatch.setattr(fused, "cat_conv1x1_bn_each", lambda *a, **k: passes.append(len(a[1])) or each(*a, **k))
    with torch.inference_mode():
        scored = sn.run([x], [(0, a) for a in archs])
        with use_backend("reference"):
            expected = [sn(x, a) for a in archs]
    # Pairs run together after cells 0 and 2 (after a reduction cell the next input 0 is a
    # FactorizedReduce); the duplicate architecture and shared cells add none.
    assert passes and all(n == 2 for n in passes)
    for y, e in zip(scored, expected):
        torch.testing.assert_close(y, e, rtol=1e-7, atol=1e-9)
    passes.clear()
    trained = sn(x, archs[0])
    assert passes == []
    torch.testing.assert_close(trained.detach(), expected[0], rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not _ext.has_op("cpu_conv1x1_bn_forward_each"), reason="needs natfast._C's CPU kernels")
def test_scoring_in_chunks_preprocesses_the_stem_once(monkeypatch):
    """Lanes scored a chunk at a time (side by side where there are lane workers): cells 0 and 1
    preprocess the stem output once for all chunks, and the logits equal the reference path's."""
    sn = _supernet("darts", layers=4)
    gen = torch.Generator().manual_seed(23)
    archs = _archs_for_sharing(sn.family, gen)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen)
    stem_channels = sn.stem.conv.out_channels
    stem_reads = []
    each = fused.cat_conv1x1_bn_each
    monkeypatch.setattr(fused, "cat_conv1x1_bn_each",
                        lambda *a, **k: stem_reads.append(a[0][0].shape[1] == stem_channels) or each(*a, **k))
    calls = _count_calls(sn)
    with torch.inference_mode():
        scored = sn.run([x], [(0, a) for a in archs], lanes_at_once=1)
        pre0_calls, stem_passes = calls.get((0, "pre0"), 0), sum(stem_reads)
        with use_backend("reference"):
            expected = [sn(x, a) for a in archs]
    # Cell 0's input 0 on its own; its input 1 and cell 1's input 0 in one pass over the stem.
    assert pre0_calls == 1 and stem_passes == 1
    for y, e in zip(scored, expected):
        torch.testing.assert_close(y, e, rtol=1e-7, atol=1e-9)
