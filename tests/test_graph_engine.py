"""The graph engine (natfast/graph/): its slot table, and one update_w step against eager PyTorch
for many genotypes (natfast/graph/check.py), with the reference cell and with the Triton cell."""
import json

import pytest
import torch

from graph_cases import random_genotype
from natfast.cell_plan import KINDS, edge_key, plan_network
from natfast.genotype import get_family, normalize
from natfast.graph import engine as graph
from natfast.graph.check import EagerTwin, step_against_eager
from natfast.graph.engine import GraphEngine
from natfast.graph.table import SLOT_FIELDS, pack_slots
from natfast.supernet import Supernet

DARTS = get_family("darts")
DARTS_PP = get_family("darts++")   # NAT++'s op set: conv 1x1 / 5x5 and 5x5 pools too
ENAS = get_family("enas")          # 5 nodes; the cell output is the loose ends
# Relative to each tensor's largest entry: float32 sums in another order (BN over a batch of 8 at
# 4x4 pixels amplifies rounding the most).
TOLERANCE = {"logits": 1e-5, "loss": 1e-5, "grad": 2e-4, "param": 2e-5, "momentum": 2e-4}
GENOTYPES = 20   # issue 23: at least 20


def make_engine(backend: str, seed: int = 0, layers: int = 5, channels: int = 8, family=DARTS) -> GraphEngine:
    torch.manual_seed(seed)
    net = Supernet(family, channels=channels, layers=layers)
    return GraphEngine(net, lr=0.1, momentum=0.9, weight_decay=3e-4, max_norm=5.0, backend=backend, capture=False)


def check_steps(backend: str, seeds, family=DARTS) -> None:
    ops, nodes = family.primitives, family.num_nodes
    engine = make_engine(backend, family=family)
    twin = EagerTwin(engine)
    gen = torch.Generator().manual_seed(1)
    # A first eager step gives some parameters momentum (the next genotypes use others too).
    twin.step(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen),
              random_genotype(999, ops, nodes))
    for seed in seeds:
        x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        errors = step_against_eager(twin, x, y, random_genotype(seed, ops, nodes))
        assert errors.pop("unused_bitwise_unchanged"), f"genotype {seed}: an unused parameter changed"
        bad = {k: v for k, v in errors.items() if v > TOLERANCE[k]}
        assert not bad, f"genotype {seed}: relative errors {bad} above {TOLERANCE}"


def test_the_test_genotypes_cover_the_hard_cases():
    """Stride-2 FactorizedReduce skips, nodes reading one node twice, a shared edge, null slots,
    nodes that are known zero, and cells whose output nothing reads."""
    seen = set()
    for seed in range(GENOTYPES):
        g = normalize(random_genotype(seed))
        plan = plan_network(g, DARTS, 5)
        for run in plan.cells:
            computed = {s.index for s in run.computed}
            for s in run.plan.slots:
                seen.add("null" if s.op == "null" else "")
                if s.index in computed and s.op == "skip_connect" and s.stride == 2:
                    seen.add("factorized_reduce")
            seen.add("reuse" if run.reuse else "")
            seen.add("zero_node" if any(z >= 2 for z in run.zero) else "")
            edges = run.plan.slots
            seen.add("same_input" if any(edges[2 * i].source == edges[2 * i + 1].source for i in range(4)) else "")
        seen.add("dead_cell" if not all(plan.live_cells) else "")
    assert {"null", "factorized_reduce", "reuse", "zero_node", "same_input", "dead_cell"} <= seen, seen


def test_slot_table_rows_follow_the_plan():
    engine = make_engine("reference")
    net = engine.supernet
    offset_of = {id(p): o for p, o in zip(engine.flat.params, engine.flat.offsets)}
    for seed in range(6):
        g = normalize(random_genotype(seed))
        rows = pack_slots(net, g, offset_of)
        assert rows.shape == (5, 8, len(SLOT_FIELDS)) and rows.dtype == torch.int32
        for layer, run in enumerate(plan_network(g, DARTS, 5).cells):
            computed = {s.index: s for s in run.computed}
            for j in range(8):
                kind = KINDS[rows[layer, j, 0]]
                if j not in computed:
                    assert kind == "null"
                    continue
                s = computed[j]
                assert kind == s.spec.kind and rows[layer, j, 3] == s.source and rows[layer, j, 4] == s.stride
                params = list(net.cells[layer].edges[edge_key(s.source, s.target)][s.op].parameters())
                got = [o for o in rows[layer, j, 5:].tolist() if o >= 0]
                assert got == [offset_of[id(p)] for p in params]


@pytest.mark.parametrize("family", [DARTS, DARTS_PP, ENAS], ids=lambda f: f.name)
def test_the_table_packs_what_the_plan_and_parameters_read_say(family):
    """SlotTable's one-walk packer against pack_slots, pack_outputs and the used flags of
    natfast.executor.parameters_read (the parameters eager PyTorch gives a gradient), over random
    genotypes with dead cells, unused inputs and all-zero outputs, and two depths."""
    from natfast.executor import parameters_read
    from natfast.graph.table import pack_outputs
    for layers in (3, 5):
        engine = make_engine("reference", layers=layers, channels=4, family=family)
        net, table = engine.supernet, engine.table
        offset_of = {id(p): o for p, o in zip(engine.flat.params, engine.flat.offsets)}
        for seed in range(12):
            g = normalize(random_genotype(seed, family.primitives, family.num_nodes, null_every=2 + seed % 3))
            slots, used, outputs = table.pack(g)
            assert torch.equal(slots, pack_slots(net, g, offset_of)), (layers, seed)
            assert torch.equal(outputs, pack_outputs(net, g)), (layers, seed)
            assert torch.equal(used, engine.flat.used(parameters_read(net, g)).cpu()), (layers, seed)


def test_reference_cell_step_equals_eager_pytorch():
    check_steps("reference", range(GENOTYPES))


def test_reference_cell_step_equals_eager_pytorch_natpp_ops():
    check_steps("reference", range(8), DARTS_PP)


def test_reference_cell_step_equals_eager_pytorch_enas_loose_ends():
    check_steps("reference", range(8), ENAS)


def test_a_darts_genotype_with_a_partial_concat():
    """Nodes left out of the concat still feed other nodes, but not the cell output."""
    g = random_genotype(3)
    g = g._replace(normal_concat=[2, 4], reduce_concat=[5, 3])
    engine = make_engine("reference")
    twin = EagerTwin(engine)
    gen = torch.Generator().manual_seed(5)
    errors = step_against_eager(twin, torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen), g)
    assert errors.pop("unused_bitwise_unchanged")
    assert all(v <= TOLERANCE[k] for k, v in errors.items()), errors


@pytest.mark.triton
@pytest.mark.slow
def test_triton_cell_step_equals_eager_pytorch():
    """The CPU contract of issue 23: the Triton cell, run in Triton's interpreter, against the
    reference supernet and torch.optim.SGD, over as many genotypes as the reference test."""
    check_steps("triton", range(GENOTYPES))


@pytest.mark.triton
@pytest.mark.slow
def test_triton_cell_step_equals_eager_pytorch_natpp_ops():
    check_steps("triton", range(6), DARTS_PP)


@pytest.mark.triton
@pytest.mark.slow
def test_triton_cell_step_equals_eager_pytorch_enas_loose_ends():
    check_steps("triton", range(6), ENAS)


def test_engine_choice_and_clear_errors():
    engine = make_engine("reference")
    assert not graph.chosen("eager", torch.device("cpu"), engine.supernet)
    assert not graph.chosen("auto", torch.device("cpu"), engine.supernet)    # only on a GPU, once validated
    with pytest.raises(ValueError, match="engine must be"):
        graph.chosen("fast", torch.device("cpu"), engine.supernet)
    kinds = tuple(k for k in graph.SUPPORTED_KINDS if k != "conv")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(graph, "SUPPORTED_KINDS", kinds)   # an op kind without kernels (conv_3x3 is a DARTS op)
        with pytest.raises(ValueError, match="no kernels for conv_3x3.*eager"):
            graph.chosen("graph", torch.device("cpu"), engine.supernet)
    with pytest.raises(ValueError, match="backend"):
        GraphEngine(Supernet(DARTS, channels=4, layers=3), lr=0.1, backend="fast")


def test_momentum_round_trips_through_torch_sgd_state():
    """Checkpoints keep torch.optim.SGD's state whichever engine ran."""
    engine = make_engine("reference")
    twin = EagerTwin(engine)
    gen = torch.Generator().manual_seed(0)
    for seed in (0, 1):
        twin.step(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen),
                  random_genotype(seed))
    twin.sync_engine()
    params = engine.flat.params
    opt = torch.optim.SGD(params, 0.1, momentum=0.9)
    engine.sgd.store_torch_state(params, opt)
    state = opt.state_dict()
    started, buf = engine.sgd.started.clone(), engine.sgd.buf.clone()
    engine.sgd.buf.normal_()
    engine.sgd.started.fill_(1)
    fresh = torch.optim.SGD(params, 0.1, momentum=0.9)
    fresh.load_state_dict(state)
    engine.sgd.load_torch_state(params, fresh)
    assert torch.equal(engine.sgd.started, started) and torch.equal(engine.sgd.buf, buf)
    assert 0 < int(started.sum()) < len(params)


@pytest.mark.triton
@pytest.mark.slow
def test_search_on_the_graph_engine_resumes_exactly(tmp_path):
    """`natfast search --engine graph` end to end (interpreter, tiny): update_w steps, then policy
    steps scored on lanes (natfast/graph/scoring.py); 4 steps straight against 2 steps, a
    checkpoint (momentum stored as torch.optim.SGD state) and 2 more after resume (a w step and a
    policy step)."""
    from natfast.config import SearchConfig
    from natfast.search import Searcher

    # 128 images, half for w: 3 update_w steps, then policy steps.
    small = dict(epochs=1, batch_size=16, channels=4, layers=3, train_limit=128, progress=False, hidden_size=16,
                 embedding_size=8, checkpoint_every=0, engine="graph", w_momentum=0.9)

    def run(name, steps, resume=False):
        s = Searcher(SearchConfig(out=str(tmp_path / name), max_steps=steps, resume=resume, **small), log=lambda _: None)
        assert s.graph is not None
        s.run()
        return s

    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume=True)
    for (name, a), b in zip(straight.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.graph.sgd.buf, resumed.graph.sgd.buf)
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.baseline == resumed.baseline
    records = [json.loads(m) for m in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["w"] * 3 + ["theta"], records
    assert all(0 < r["loss"] < 10 for r in records[:3]), records
    assert all(0 <= r["beta_acc"] <= 1 and 0 <= r["alpha_acc"] <= 1 for r in records[3:]), records


def test_slot_table_writes_each_genotype_into_the_same_device_buffers():
    """A captured step reads the table at fixed addresses; the host alternates pinned buffers."""
    engine = make_engine("reference", layers=3, channels=4)
    table = engine.table
    buffers = (table.slots, table.used, table.outputs)
    addresses = [t.data_ptr() for t in buffers]
    for seed in (0, 1, 0):
        g = random_genotype(seed)
        table.write(g)
        for written, packed in zip(buffers, table.pack(g)):
            assert torch.equal(written, packed)
        assert [t.data_ptr() for t in buffers] == addresses
    assert table._host[0][0].data_ptr() != table._host[1][0].data_ptr()
