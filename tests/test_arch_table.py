"""The architecture table (natfast/arch_table.py): fixed shapes for every genotype, and every field
checked against the cell plan and the supernet's modules found by name."""
import pytest
import torch

from natfast.arch_table import CELL_FIELDS, SLOT_FIELDS, ArchTable
from natfast.cell_plan import KINDS, edge_key, plan_network
from natfast.flat_params import FlatParameters
from natfast.genotype import get_family, normalize
from natfast.supernet import Supernet

from test_flat_params import _genotypes


def _offset_of(flat, tensor):
    return next(o for p, o in zip(flat.params, flat.offsets) if p is tensor)


@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_table_holds_the_plan_and_the_flat_offsets_of_each_slots_weights(family_name):
    family = get_family(family_name)
    torch.manual_seed(0)
    net = Supernet(family, 4, 5)
    flat = FlatParameters(list(net.parameters()))
    table = ArchTable(net, flat)
    shapes = set()
    for genotype in _genotypes(family, 10, seed=7):
        cells, slots = table.pack(genotype)
        shapes.add((tuple(cells.shape), tuple(slots.shape)))
        network = plan_network(normalize(genotype), family, net.layers)
        for layer, (run, cell) in enumerate(zip(network.cells, net.cells)):
            head = dict(zip(CELL_FIELDS, cells[layer].tolist()))
            assert head["slots"] == len(run.computed)
            assert cells[layer, len(CELL_FIELDS):len(CELL_FIELDS) + head["outputs"]].tolist() == list(run.output_blocks)
            assert head["pre1"] == int(run.input_used[1])
            if run.input_used[0]:
                pre0 = list(cell.pre0.parameters())
                assert head["pre0"] == (2 if run.reduction_prev else 1)
                assert [head["pre0_w0"], head["pre0_w1"]][:len(pre0)] == [_offset_of(flat, p) for p in pre0]
            else:
                assert head["pre0"] == 0 and head["pre0_w0"] == -1
            if run.input_used[1]:
                assert head["pre1_w0"] == _offset_of(flat, next(cell.pre1.parameters()))
            for j, slot in enumerate(run.computed):
                row = dict(zip(SLOT_FIELDS, slots[layer, j].tolist()))
                assert (KINDS[row["kind"]], row["source"], row["target"], row["stride"]) == \
                       (slot.spec.kind, slot.source, slot.target, slot.stride)
                weights = [row[f"w{k}"] for k in range(4) if row[f"w{k}"] >= 0]
                if slot.index in run.reuse:         # a repeated edge reads the first one's value
                    assert weights == [] and run.computed[row["reuse"]].index == run.reuse[slot.index]
                else:
                    module = cell.edges[edge_key(slot.source, slot.target)][slot.op]
                    assert weights == [_offset_of(flat, p) for p in module.parameters()]
            assert (slots[layer, len(run.computed):, 0] == 0).all()   # padding: kind null
    assert len(shapes) == 1


def test_write_alternates_device_buffers_and_copies_the_packed_table():
    family = get_family("darts")
    net = Supernet(family, 4, 3)
    table = ArchTable(net, FlatParameters(list(net.parameters())))
    first, second = _genotypes(family, 2, seed=8)
    a = table.write(first)
    b = table.write(second)
    assert a[0].data_ptr() != b[0].data_ptr() and a[1].data_ptr() != b[1].data_ptr()
    for written, packed in zip(a, table.pack(first)):
        assert torch.equal(written, packed)
    for written, packed in zip(b, table.pack(second)):
        assert torch.equal(written, packed)
    assert table.write(first)[0].data_ptr() == a[0].data_ptr()
