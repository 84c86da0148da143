"""The graph engine's Triton cell forward (natfast/graph/triton_forward.py, kernels/graph_forward.py)
against natfast.graph.reference.fill_forward_buffers: the output and every saved buffer, on random
cells (tests/graph_cases.py); the launch sequence does not depend on the cell; no host sync."""
import pytest
import torch

from graph_cases import LaunchRecorder, NoHostSync, random_cell
from natfast.graph.buffers import CellBuffers, CellShape
from natfast.graph.reference import fill_forward_buffers
from natfast.graph.table import KIND

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(autouse=True)
def gpu_tiles(monkeypatch):
    """The GPU's tiling here (many programs per slot); the engine tests run the interpreter's big tiles."""
    from natfast.graph import buffers
    monkeypatch.setattr(buffers, "GPU_TILES_IN_INTERPRETER", True)


def _forward():
    pytest.importorskip("triton")
    from natfast.graph.triton_forward import cell_forward
    return cell_forward


def _inputs(shape: CellShape, seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(shape.n, shape.c, shape.h_in, shape.w_in, generator=g).to(DEVICE) for _ in range(2)]


def _buffers(shape: CellShape) -> CellBuffers:
    bufs = CellBuffers(shape, DEVICE)
    for t in (bufs.out, bufs.a1, bufs.b1, bufs.a2, bufs.b2, bufs.stats):
        t.fill_(float("nan"))  # what the forward must write is then visibly written
    return bufs


def check_cell(seed: int, reduction: bool, c: int = 8, h: int = 8, n: int = 4, **cell):
    rows, flat = random_cell(seed, c, 4, reduction, **cell)
    flat = flat.to(DEVICE)
    shape = CellShape(n, c, 4, h, h, reduction)
    x0, x1 = _inputs(shape, seed)
    want, got = CellBuffers(shape, DEVICE), _buffers(shape)
    fill_forward_buffers(want, x0, x1, flat, rows)
    out = _forward()(got, x0, x1, flat, torch.tensor(rows, dtype=torch.int32, device=DEVICE))

    assert out.data_ptr() == got.out.data_ptr()
    assert torch.equal(got.x, want.x)
    torch.testing.assert_close(got.out, want.out, **TOL)
    for s, (kind, _, _, _, stride, *_) in enumerate(rows):
        if kind == KIND["null"] or (kind == KIND["skip"] and stride == 1):
            continue
        saved = [("b1", 0)] + {KIND["sep_conv"]: [("a1", 0), ("a2", 0), ("b2", 1)],
                               KIND["dil_conv"]: [("a1", 0)]}.get(kind, [])
        for name, bn in saved:
            torch.testing.assert_close(getattr(got, name)[s], getattr(want, name)[s], **TOL,
                                       msg=lambda m: f"slot {s} (kind {kind}) {name}: {m}")
            if name.startswith("b"):
                mean, rstd = got.stats[bn, s]
                torch.testing.assert_close(mean, want.stats[bn, s, 0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(rstd, want.stats[bn, s, 1], atol=0, rtol=1e-4)


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cell_matches_reference(seed, reduction):
    check_cell(seed, reduction)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
@pytest.mark.parametrize("seed", range(2, 12))
def test_more_cells_match_reference(seed, reduction):
    check_cell(seed, reduction)


def test_channels_not_a_power_of_two():
    check_cell(3, True, c=6)
    check_cell(4, False, c=6)


def test_larger_image():
    check_cell(5, True, h=16, n=2)


def test_null_nodes_are_zero():
    # seed 8: nodes 2 and 3 have only null slots; the others pools and skips (FactorizedReduce)
    check_cell(8, True, ops=("null", "max_pool_3x3", "skip_connect"))
    check_cell(0, False, ops=("null",))


def test_cases_cover_every_kind_and_stride():
    """The cells above reach every (kind, window, stride) the DARTS ops give."""
    seen = {tuple(r[i] for i in (0, 1, 4)) for reduction in (False, True) for seed in range(12)
            for r in random_cell(seed, 8, 4, reduction)[0]}
    for kind, k in [("skip", 0), ("max_pool", 3), ("avg_pool", 3), ("sep_conv", 3), ("sep_conv", 5),
                    ("dil_conv", 3), ("dil_conv", 5), ("conv", 3)]:
        for stride in (1, 2):
            assert (KIND[kind], k, stride) in seen


def test_launch_sequence_is_the_same_for_every_cell(monkeypatch):
    cell_forward = _forward()
    from natfast.graph import triton_forward
    shape = CellShape(2, 8, 4, 8, 8, True)
    cells = [random_cell(seed, 8, 4, True) for seed in (0, 3)]
    assert cells[0][0] != cells[1][0]
    bufs = _buffers(shape)
    slots = torch.empty(shape.slots, 9, dtype=torch.int32, device=DEVICE)
    flat = torch.empty(max(f.numel() for _, f in cells), device=DEVICE)
    x0, x1 = _inputs(shape, 0)
    recorder = LaunchRecorder(monkeypatch, type(triton_forward._kernels()._first_kernel))
    records = []
    for rows, weights in cells:
        slots.copy_(torch.tensor(rows, dtype=torch.int32))
        flat[:weights.numel()].copy_(weights)
        recorder.launches.clear()
        cell_forward(bufs, x0, x1, flat, slots)
        records.append(list(recorder.launches))
    assert len(records[0]) == 5 * shape.nodes
    assert records[0] == records[1]


def test_no_host_sync():
    cell_forward = _forward()
    shape = CellShape(2, 8, 4, 8, 8, False)
    rows, flat = random_cell(1, 8, 4, False)
    bufs = _buffers(shape)
    slots = torch.tensor(rows, dtype=torch.int32, device=DEVICE)
    x0, x1 = _inputs(shape, 1)
    flat = flat.to(DEVICE)
    cell_forward(bufs, x0, x1, flat, slots)  # first call: allocates its scratch
    with NoHostSync():
        cell_forward(bufs, x0, x1, flat, slots)
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():
        slots[0, 0].item()  # the mode does catch a read


@pytest.mark.parametrize("seed,reduction", [(0, False), (1, True)])
def test_interpreter_tiling_matches_the_reference(monkeypatch, seed, reduction):
    """The interpreter's big tiles (what the engine tests run) give the same buffers."""
    from natfast.graph import buffers
    monkeypatch.setattr(buffers, "GPU_TILES_IN_INTERPRETER", False)
    check_cell(seed, reduction, h=16)


def _shifted(rows, by: int):
    """The rows with their weight offsets moved by `by` (cells whose weights share one flat buffer)."""
    return [r[:5] + [w + by if w >= 0 else w for w in r[5:]] for r in rows]


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
def test_lanes_each_match_the_reference(reduction):
    """Scoring's lane axis (natfast/graph/scoring.py): lane l runs its own cell on its own inputs,
    from one launch sequence, each lane equal to the one-cell reference; the lanes share the flat
    weights; the first lane's slot table may not leak into the others'."""
    cell_forward = _forward()
    shape = CellShape(2, 8, 4, 8, 8, reduction)
    cells = [random_cell(seed, 8, 4, reduction) for seed in (2, 5, 7)]
    rows, flats, used = [], [], 0
    for r, f in cells:
        rows.append(_shifted(r, used))
        flats.append(f)
        used += f.numel()
    flat = torch.cat(flats).to(DEVICE)
    g = torch.Generator().manual_seed(11)
    x0, x1 = (torch.randn(3, 2, 8, 8, 8, generator=g).to(DEVICE) for _ in range(2))
    bufs = CellBuffers(shape, DEVICE, lanes=3)
    for t in (bufs.out, bufs.a1, bufs.b1, bufs.a2, bufs.b2, bufs.stats):
        t.fill_(float("nan"))
    out = cell_forward(bufs, x0, x1, flat, torch.tensor(rows, dtype=torch.int32, device=DEVICE))
    assert out.shape == (3, 2, 4 * 8, shape.h, shape.w)
    for lane in range(3):
        want = CellBuffers(shape, DEVICE)
        fill_forward_buffers(want, x0[lane], x1[lane], flat, rows[lane])
        torch.testing.assert_close(out[lane], want.out, **TOL, msg=lambda m: f"lane {lane}: {m}")
    # One input for every lane (the stem feeds the first cells): broadcast, the same as three copies.
    again = cell_forward(bufs, x0[:1], x1[:1], flat, torch.tensor(rows, dtype=torch.int32, device=DEVICE)).clone()
    want = CellBuffers(shape, DEVICE)
    fill_forward_buffers(want, x0[0], x1[0], flat, rows[1])
    torch.testing.assert_close(again[1], want.out, **TOL)
    with pytest.raises(ValueError, match=r"slots must be a contiguous \(3, 8, 9\)"):
        cell_forward(bufs, x0, x1, flat, torch.tensor(rows[0], dtype=torch.int32, device=DEVICE))
