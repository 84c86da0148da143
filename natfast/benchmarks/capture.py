"""`natfast bench capture`: whether the graph engine's update_w can be captured once and replayed
for every genotype (natfast/graph/), proved on any machine.

It runs the step for several fresh genotypes while recording every Triton launch and ATen op
(natfast/graph/recording.py) and reports: `launches_per_step`, `identical_across_genotypes`,
`host_syncs`, `data_dependent_shapes`, `device_copies` (inside the step: the table and batch
copies happen before it), `allocations_after_warmup` (engine buffers created after the first step;
on CUDA also the allocator's allocations over the recorded steps), and
`max_rel_error_vs_reference` (one step against eager PyTorch from the same state,
natfast/graph/check.py); `host_pack_ms`: the host's time to turn a fresh genotype into its table
(`host_pack_reference_ms`: the functions the table's packer replaces, same genotypes). `scoring`
reports the same for a scoring pass of --lanes architectures at once (natfast/graph/scoring.py;
its error: the logits against the eager supernet's). On a CPU the kernels run in Triton's
interpreter (the command re-runs itself with NATFAST_TRITON_INTERPRET=1 when needed): use --small
there (C = 8, 5 cells, batch 8, 16x16, under 10 minutes on 2 cores). At the full size on a CPU,
--count-only records the launches without running the Triton kernels (their sequence does not
depend on the values).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

import torch

from . import positive_int

FULL = dict(channels=20, layers=8, batch=64, image=32)
SMALL = dict(channels=8, layers=5, batch=8, image=16)


def _interpreting() -> bool:
    from ..ops.backends import triton as triton_backend
    return triton_backend.interpreting()


def _rerun_interpreted(argv: List[str]) -> Dict:
    env = dict(os.environ, NATFAST_TRITON_INTERPRET="1", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-m", "natfast", "bench", "capture", *argv, "--json"], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"natfast bench capture under the interpreter failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_buffers(engine) -> List[torch.Tensor]:
    """Every persistent tensor of the engine: flat parameters, gradients, momentum, tables and each
    cell's buffers (with whatever scratch the kernels attached to them)."""
    tensors = [engine.flat.data, engine.flat.grad, engine.flat.segment_of, engine.sgd.buf, engine.sgd.started,
               engine.table.slots, engine.table.used, engine.table.outputs]
    for cells in engine.network._buffers.values():
        for bufs in cells:
            tensors += _tensors_in(vars(bufs))
    return tensors


def _tensors_in(values) -> List[torch.Tensor]:
    out = []
    for v in values.values() if isinstance(values, dict) else values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _tensors_in(list(v))
        elif isinstance(v, dict):
            out += _tensors_in(v)
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            out += _tensors_in(vars(v))
    return out


def scorer_buffers(scorer) -> List[torch.Tensor]:
    """Every persistent tensor of a LaneScorer (natfast/graph/scoring.py)."""
    tensors = [scorer.flat.data, scorer.table.slots, scorer.table.outputs]
    for bufs in scorer._buffers.values():
        tensors += _tensors_in(vars(bufs))
    return tensors


def _recorded(runs, buffers, count_only: bool) -> Dict:
    """Each of `runs`, a (write the table, run) pair, after a first unrecorded warm-up: the run
    under the recorder (the table write happens before it, as before a replay); the contract keys
    of issue 23 over the recorded runs. `buffers()` lists the persistent tensors."""
    from ..graph.recording import recording
    (write, first_run), *rest = runs
    write()
    if count_only:
        with recording(buffers(), count_only=True):
            first_run()            # allocates the buffers
    else:
        first_run()                # warm-up: buffers, scratch, Triton compiles
    before = len(buffers())
    records = []
    for write, run in rest:
        write()
        with recording(buffers(), count_only=count_only) as rec:
            run()
        records.append(rec)
    first = records[0]
    return {
        "launches_per_step": first.launches, "triton_launches_per_step": len(first.triton),
        "aten_ops_per_step": len(first.aten),
        "identical_across_genotypes": all(r.triton == first.triton and r.aten == first.aten for r in records),
        "host_syncs": sum(len(r.host_syncs) for r in records),
        "data_dependent_shapes": sum(len(r.data_dependent) for r in records),
        "device_copies": sum(len(r.device_copies) for r in records),
        "allocations_after_warmup": len(buffers()) - before,
    }


def measure(channels: int, layers: int, batch: int, image: int, genotypes: int, checks: int,
            count_only: bool, device: torch.device, lanes: int = 0) -> Dict:
    from ..genotype import get_family
    from ..graph.check import EagerTwin, step_against_eager
    from ..graph.engine import GraphEngine
    from ..sampler import sample_genotype
    from ..supernet import Supernet

    family = get_family("darts")
    torch.manual_seed(0)
    net = Supernet(family, channels=channels, layers=layers).to(device)
    engine = GraphEngine(net, lr=0.025, momentum=0.9, weight_decay=3e-4, max_norm=5.0, capture=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image, image, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    archs = [sample_genotype(family, gen) for _ in range(genotypes + 1)]
    twin = EagerTwin(engine) if checks else None

    def step(g):
        return lambda: engine.table.write(g), lambda: engine._step(x, y)

    cuda_allocs = torch.cuda.memory_stats(device)["allocation.all.allocated"] if device.type == "cuda" else None
    result = {"device": str(device), "channels": channels, "layers": layers, "batch": batch, "image": image,
              "genotypes": genotypes, "count_only": count_only}
    result.update(_recorded([step(g) for g in archs], lambda: engine_buffers(engine), count_only))
    if cuda_allocs is not None:
        result["cuda_allocations_during_recorded_steps"] = (
            torch.cuda.memory_stats(device)["allocation.all.allocated"] - cuda_allocs)
    if checks and not count_only:
        errors = [step_against_eager(twin, x, y, sample_genotype(family, gen)) for _ in range(checks)]
        result["max_rel_error_vs_reference"] = max(v for e in errors for k, v in e.items() if k != "unused_bitwise_unchanged")
        result["unused_bitwise_unchanged"] = all(e["unused_bitwise_unchanged"] for e in errors)
        result["checked_genotypes"] = checks
    else:
        result["max_rel_error_vs_reference"] = None
    result.update(host_pack_ms(engine, family, gen))
    if lanes:
        result["scoring"] = measure_scoring(engine, x, y, family, gen, lanes, max(2, min(genotypes, 3)),
                                            bool(checks), count_only)
    return result


def host_pack_ms(engine, family, gen: torch.Generator, count: int = 50) -> Dict:
    """Host time to turn a fresh genotype into its slot table, used flags and output mask, per
    genotype: the table's one-walk packer, and the three functions it replaces (pack_slots,
    pack_outputs, parameters_read), on the same genotypes with their network plans already made. A
    step cannot start before this is done, and on a GPU the host does it while the last step runs."""
    import time

    from ..cell_plan import plan_network
    from ..executor import parameters_read
    from ..genotype import normalize
    from ..graph.table import pack_outputs, pack_slots
    from ..sampler import sample_genotype
    net, table = engine.supernet, engine.table
    archs = [normalize(sample_genotype(family, gen)) for _ in range(count)]
    for g in archs:
        plan_network(g, family, net.layers)
    offset_of = {id(p): o for p, o in zip(engine.flat.params, engine.flat.offsets)}
    start = time.perf_counter()
    for g in archs:
        table._packer.pack(g)
    packer = time.perf_counter()
    for g in archs:
        pack_slots(net, g, offset_of), pack_outputs(net, g), engine.flat.used(parameters_read(net, g))
    done = time.perf_counter()
    return {"host_pack_ms": round((packer - start) * 1e3 / count, 3),
            "host_pack_reference_ms": round((done - packer) * 1e3 / count, 3)}


def measure_scoring(engine, x: torch.Tensor, y: torch.Tensor, family, gen: torch.Generator, lanes: int,
                    sets: int, check: bool, count_only: bool) -> Dict:
    """The same contract for a scoring pass of `lanes` architectures (natfast/graph/scoring.py):
    recorded for `sets` fresh sets of architectures; its logits against the eager supernet's."""
    from ..ops import dispatch
    from ..sampler import sample_genotype
    scorer = engine.scorer(lanes)
    archs = [[sample_genotype(family, gen) for _ in range(lanes)] for _ in range(sets + 1)]

    def score(chunk):
        return lambda: scorer._write(chunk), lambda: scorer._accuracies(x, y)

    result = {"lanes": lanes, "architecture_sets": sets}
    result.update(_recorded([score(c) for c in archs], lambda: scorer_buffers(scorer), count_only))
    result["identical_across_architecture_sets"] = result.pop("identical_across_genotypes")
    if check and not count_only:
        chunk = archs[-1]
        got = scorer.logits(x, chunk)
        with torch.no_grad(), dispatch.use_backend("reference"):
            want = torch.stack([engine.supernet(x, a) for a in chunk])
        result["max_rel_error_vs_reference"] = ((got - want).abs().max() / want.abs().max()).item()
    else:
        result["max_rel_error_vs_reference"] = None
    return result


def main(argv: List[str]) -> Dict:
    p = argparse.ArgumentParser(prog="natfast bench capture", description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="C = 8, 5 cells, batch 8, 16x16 (for the CPU interpreter)")
    p.add_argument("--genotypes", type=positive_int, default=10, help="fresh genotypes recorded and compared")
    p.add_argument("--checks", type=int, default=3, help="genotypes whose step is compared with eager PyTorch")
    p.add_argument("--count-only", action="store_true",
                   help="record the Triton launches without running them (a full-size count on a CPU)")
    p.add_argument("--lanes", type=int, default=2,
                   help="also record a scoring pass of this many architectures at once (the policy step's "
                        "m + m * n; derive's K + 1); 0: update_w only")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="(accepted for symmetry; the result is JSON anyway)")
    args = p.parse_args(argv)
    if args.lanes < 0:
        p.error(f"--lanes must be >= 0, got {args.lanes}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu" and not _interpreting():
        return _rerun_interpreted([a for a in argv if a != "--json"])
    size = SMALL if args.small else FULL
    if device.type == "cpu" and not args.small and not args.count_only:
        p.error("at the full size the interpreter takes hours on a CPU: use --small, or --count-only")
    return measure(size["channels"], size["layers"], size["batch"], size["image"], args.genotypes,
                   args.checks, args.count_only, device, args.lanes)
