"""The graph engine's Triton cell backward (natfast/graph/triton_backward.py, kernels/graph_backward.py)
against autograd through natfast.graph.reference.cell_forward: the input gradients and the flat
weight gradient, on random cells (tests/graph_cases.py) and on max pools full of ties; the launch
sequence does not depend on the cell; no host sync; the scratch is allocated once.

Tolerances: float32 everywhere, sums in another order than autograd's. BN backward divides by the
batch's standard deviation, which over a few hundred values amplifies rounding in absolute terms, so
each gradient is compared with atol 1e-4 times its own largest magnitude (plus rtol 1e-4); the
observed errors stay below 1e-6 of that magnitude.
"""
import pytest
import torch

from graph_cases import DARTS_OPS, LaunchRecorder, NoHostSync, random_cell
from natfast.cell_plan import OPERATIONS, spec
from natfast.graph.buffers import CellBuffers, CellShape
from natfast.graph.reference import cell_forward, fill_forward_buffers, flat_weights
from natfast.graph.table import KIND, MAX_WEIGHTS

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def gpu_tiles(monkeypatch):
    """The GPU's tiling here (many programs per slot); the engine tests run the interpreter's big tiles."""
    from natfast.graph import buffers
    monkeypatch.setattr(buffers, "GPU_TILES_IN_INTERPRETER", True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4


def _backward():
    pytest.importorskip("triton")
    from natfast.graph.triton_backward import cell_backward
    return cell_backward


def _inputs(shape: CellShape, seed: int, quantized: bool = False):
    """x0, x1 and d_out on the CPU; `quantized`: small integers, so that pooling windows tie."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = [torch.randn(shape.n, shape.c, shape.h_in, shape.w_in, generator=g) for _ in range(2)]
    if quantized:
        x = [v.mul(1.5).round() for v in x]
    d_out = torch.randn(shape.n, shape.nodes * shape.c, shape.h, shape.w, generator=g)
    return x[0], x[1], d_out


def reference_grads(rows, flat, x0, x1, d_out, reduction):
    """d_x0, d_x1, d_flat of (cell_forward * d_out).sum() by autograd, on the CPU (no TF32)."""
    leaves = [t.clone().requires_grad_() for t in (x0, x1, flat)]
    out = cell_forward(leaves[0], leaves[1], flat_weights(leaves[2]), rows, reduction)
    grads = torch.autograd.grad((out * d_out).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def _close(got, want, what):
    scale = max(want.abs().max().item(), 1e-30)
    torch.testing.assert_close(got.cpu(), want, rtol=TOL, atol=TOL * scale, msg=lambda m: f"{what}: {m}")


def check_cell(rows, flat, shape: CellShape, seed: int = 0, quantized: bool = False, pad=(0, 0),
               onto_random: bool = False):
    """Runs the backward on fill_forward_buffers' buffers and checks it against autograd. `pad`:
    unused weights before and after the cell's (offsets shifted), whose gradient must stay bitwise
    as it was; `onto_random`: the weight gradients add onto a random flat_grad, else onto zeros."""
    before, after = pad
    rows = [list(r[:5]) + [o + before if o >= 0 else o for o in r[5:]] for r in rows]
    g = torch.Generator().manual_seed(3000 + seed)
    flat = torch.cat([torch.randn(before, generator=g), flat, torch.randn(after, generator=g)])
    start = torch.randn(flat.shape, generator=g) if onto_random else torch.zeros_like(flat)
    x0, x1, d_out = _inputs(shape, seed, quantized)
    want = reference_grads(rows, flat, x0, x1, d_out, shape.reduction)

    bufs = CellBuffers(shape, DEVICE)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fill_forward_buffers(bufs, x0.to(DEVICE), x1.to(DEVICE), flat.to(DEVICE), rows)
    flat_grad = start.to(DEVICE, copy=True)
    dx0, dx1 = _backward()(bufs, d_out.to(DEVICE), flat.to(DEVICE), flat_grad,
                           torch.tensor(rows, dtype=torch.int32, device=DEVICE))
    flat_grad = flat_grad.cpu()
    _close(dx0, want[0], "d_x0")
    _close(dx1, want[1], "d_x1")
    _close(flat_grad - start, want[2], "d_flat")
    used = torch.zeros(flat.numel(), dtype=torch.bool)
    for kind, k, _, _, stride, *offsets in rows:
        for offset, size in zip(offsets, _weight_sizes(kind, k, stride, shape.c)):
            used[offset: offset + size] = True
    assert torch.equal(flat_grad[~used], start[~used]), "weights no slot uses got a gradient"
    return bufs


def _weight_sizes(kind, k, stride, c):
    if kind == KIND["sep_conv"]:
        return [c * k * k, c * c, c * k * k, c * c]
    if kind == KIND["dil_conv"]:
        return [c * k * k, c * c]
    if kind == KIND["conv"]:
        return [c * c * k * k]
    if kind == KIND["skip"] and stride == 2:
        return [c // 2 * c] * 2
    return []


def random_check(seed, reduction, c=8, h=8, n=4, ops=DARTS_OPS, **check):
    rows, flat = random_cell(seed, c, 4, reduction, ops)
    return check_cell(rows, flat, CellShape(n, c, 4, h, h, reduction), seed, **check)


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cell_matches_autograd(seed, reduction):
    random_check(seed, reduction)


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
@pytest.mark.parametrize("seed", range(4, 12))
def test_more_cells_match_autograd(seed, reduction):
    random_check(seed, reduction)


def test_adds_onto_the_flat_gradient_and_leaves_unused_weights():
    random_check(9, True, pad=(37, 53), onto_random=True)   # 9: a node repeating a FactorizedReduce
    random_check(4, False, pad=(37, 53), onto_random=True)  # 4: nodes repeating dil_conv, sep_conv


def test_channels_not_a_power_of_two_and_every_op():
    random_check(10, True, c=6, ops=OPERATIONS)   # conv_1x1, conv_3x3, FactorizedReduce at stride 2
    random_check(0, False, c=6, ops=OPERATIONS)   # conv_5x5, max_pool_5x5, dil_conv_5x5, identity


def test_larger_image():
    random_check(5, True, h=16)   # source tiles > output tiles: programs loop over source tiles
    random_check(10, False, h=16, n=2)


def _row(op, source, reduction, offsets):
    if op == "null":
        return [KIND["null"]] + [-1] * 8
    s = spec(op)
    stride = 2 if reduction and source < 2 else 1
    return [KIND[s.kind], s.kernel, s.dilation, source, stride] + offsets + [-1] * (MAX_WEIGHTS - len(offsets))


@pytest.mark.parametrize("reduction", [False, True], ids=["normal", "reduction"])
def test_max_pool_ties_go_to_the_first_maximum(reduction):
    """Inputs of small integers: most windows tie. Node 3 is all null (zero), so pooling it ties
    everywhere; node 4 adds a skip of x0 (in a reduction cell a FactorizedReduce)."""
    c = 8
    fr = [0, c * c // 2] if reduction else []
    ops = [("max_pool_3x3", 0), ("max_pool_5x5", 1), ("null", 0), ("null", 0),
           ("max_pool_3x3", 3), ("skip_connect", 0), ("max_pool_5x5", 4), ("avg_pool_5x5", 2)]
    rows = [_row(op, source, reduction, fr if op == "skip_connect" else []) for op, source in ops]
    flat = torch.randn(c * c, generator=torch.Generator().manual_seed(7)) * 0.3
    check_cell(rows, flat, CellShape(4, c, 4, 8, 8, reduction), quantized=True)


def test_many_tiles_per_program(monkeypatch):
    """Tiles of 16 pixels, at most 2 programs per slot and 2 per conv tap: every loop over a
    program's tiles and every sum over partial rows runs more than once."""
    from natfast.graph import triton_backward
    monkeypatch.setattr(triton_backward, "PIXELS_PER_TILE", 16 * 16)
    monkeypatch.setattr(triton_backward, "MAX_GROUPS", 2)
    monkeypatch.setattr(triton_backward, "TILES_PER_CONV_SPLIT", 2)
    monkeypatch.setattr(triton_backward, "MAX_CONV_SPLITS", 2)
    bufs = random_check(0, True, n=2)
    assert (bufs.backward_partials.tiling.block, bufs.backward_partials.tiling.groups) == (16, 2)
    bufs = random_check(2, False, n=1)  # with a conv_3x3
    assert bufs.backward_partials.tiling.conv_splits == 2


def _fixed_inputs(shape, cells):
    """One slot table, flat buffer and set of inputs that every cell is written into."""
    slots = torch.empty(shape.slots, 9, dtype=torch.int32, device=DEVICE)
    flat = torch.zeros(max(f.numel() for _, f in cells), device=DEVICE)
    return slots, flat, torch.zeros_like(flat)


def test_launch_sequence_is_the_same_for_every_cell(monkeypatch):
    """Also: the same inputs give bitwise the same gradients (no atomics, fixed orders)."""
    cell_backward = _backward()
    from natfast.graph import triton_backward
    shape = CellShape(2, 8, 4, 8, 8, True)
    cells = [random_cell(seed, 8, 4, True) for seed in (0, 9)]
    assert cells[0][0] != cells[1][0]
    bufs = CellBuffers(shape, DEVICE)
    slots, flat, flat_grad = _fixed_inputs(shape, cells)
    x0, x1, d_out = (t.to(DEVICE) for t in _inputs(shape, 0))
    recorder = LaunchRecorder(monkeypatch, type(triton_backward._kernels()._head_kernel))
    records, results = [], []
    for rows, weights in cells + cells[:1]:
        slots.copy_(torch.tensor(rows, dtype=torch.int32))
        flat[:weights.numel()].copy_(weights)
        fill_forward_buffers(bufs, x0, x1, flat, rows)
        flat_grad.zero_()
        recorder.launches.clear()
        dx0, dx1 = cell_backward(bufs, d_out, flat, flat_grad, slots)
        records.append(list(recorder.launches))
        results.append([dx0.clone(), dx1.clone(), flat_grad.clone()])
    assert len(records[0]) == 5 * shape.nodes + 2
    assert records[0] == records[1] == records[2]
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[2]))


def test_no_host_sync_and_scratch_allocated_once():
    cell_backward = _backward()
    shape = CellShape(2, 8, 4, 8, 8, False)
    rows, flat = random_cell(1, 8, 4, False)
    bufs = CellBuffers(shape, DEVICE)
    x0, x1, d_out = (t.to(DEVICE) for t in _inputs(shape, 1))
    flat = flat.to(DEVICE)
    fill_forward_buffers(bufs, x0, x1, flat, rows)
    slots = torch.tensor(rows, dtype=torch.int32, device=DEVICE)
    flat_grad = torch.zeros_like(flat)
    cell_backward(bufs, d_out, flat, flat_grad, slots)  # first call: allocates its scratch
    scratch = bufs.backward_partials
    addresses = (scratch.bn.data_ptr(), scratch.weights.data_ptr())
    with NoHostSync():
        cell_backward(bufs, d_out, flat, flat_grad, slots)
    assert bufs.backward_partials is scratch
    assert (scratch.bn.data_ptr(), scratch.weights.data_ptr()) == addresses
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():
        slots[0, 0].item()  # the mode does catch a read
