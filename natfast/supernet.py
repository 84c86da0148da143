"""The weight-sharing supernet and its execution engine.

Every edge f -> t of every cell holds all candidate operations (BN affine=False, batch
statistics). An architecture selects one op on two edges per node. `Supernet.run` executes any
number of architectures in one pass:

* each architecture is a *lane* bound to a group of input samples (its own samples, or samples
  shared with other lanes);
* every value (stem output, preprocessed input, edge output, node) is identified by what it is
  computed from, so values that are identical across lanes are computed once (prefix sharing:
  the stem always, whole cells and single nodes while the architectures agree);
* at each edge, every candidate op runs once on all distinct inputs routed to it, concatenated,
  with BN statistics per input (so each lane gets exactly what it would get alone);
* null edges, edges from known-zero nodes (BN affine=False maps zeros to zeros) and nodes that
  cannot reach the cell output are never executed;
* when scoring, a node's sum goes into one of its edge outputs where nothing else reads that output
  (not into a new tensor);
* on a CPU, lanes go through the cells a few at a time; when scoring (autograd records nothing),
  these chunks, which share nothing past the stem and its preprocessing (computed once for all),
  run side by side (natfast/lane_workers.py), and each cell output is read once by both cells that
  preprocess it (`cat_conv1x1_bn_each`).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import AbstractSet, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import lane_workers
from .genotype import Family, Genotype, output_nodes
from .ops import fused
from .ops.layers import FactorizedReduce, Norm, ReLUConvBN, make_op


def reduction_layers(layers: int) -> Tuple[int, int]:
    return layers // 3, 2 * layers // 3


class Stem(nn.Module):
    """conv 3x3 (3 -> c_out) + BN."""

    def __init__(self, c_out: int, affine: bool, track: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, c_out, 3, padding=1, bias=False)
        self.norm = Norm(c_out, affine, track)

    def forward(self, x: torch.Tensor, groups=None) -> torch.Tensor:
        return self.norm(self.conv(x), groups)


def check_images(x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
    """A clear error for input that is not a batch of RGB images in the model's dtype (not a
    failure deep in a conv). `weight`: one of the model's parameters."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a batch of RGB images shaped (N, 3, H, W) with N >= 1 and H, W >= 2, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"images must be floating point (normalised as natfast.data does), got {x.dtype}")
    if weight is not None and x.dtype != weight.dtype and not _autocast_enabled(x.device.type):
        raise ValueError(f"images are {x.dtype} but the model's weights are {weight.dtype}: convert one to the "
                         f"other (e.g. x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # a torch that takes no device (CUDA's state; the CPU's has its own query)
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def edge_key(f: int, t: int) -> str:
    return f"{f}_{t}"


class SuperCell(nn.Module):
    def __init__(self, primitives: Sequence[str], num_nodes: int, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction, self.num_nodes, self.channels = reduction, num_nodes, c
        self.pre0 = (FactorizedReduce(c_pp, c, False, False) if reduction_prev
                     else ReLUConvBN(c_pp, c, 1, 1, False, False))
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, False, False)
        self.edges = nn.ModuleDict()
        for t in range(2, num_nodes + 2):
            for f in range(t):
                stride = 2 if reduction and f < 2 else 1
                self.edges[edge_key(f, t)] = nn.ModuleDict(
                    {op: make_op(op, c, stride, affine=False, pool_bn=True, track=False)
                     for op in primitives if op != "null"})


class _CellPlan(NamedTuple):
    """Each lane's genes for one kind of cell (normal or reduction: every cell of a kind has the
    same), its output nodes and the nodes that reach them."""
    genes: List[Tuple[Sequence, Sequence[int]]]
    outputs: List[Sequence[int]]
    lives: List[set]

    @staticmethod
    def of(archs: Sequence[Genotype], reduction: bool, family: Family) -> "_CellPlan":
        genes = [(g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat) for g in archs]
        outputs = [output_nodes(edges, concat, family) for edges, concat in genes]
        return _CellPlan(genes, outputs, [live_nodes(edges, outs) for (edges, _), outs in zip(genes, outputs)])


@dataclass(eq=False)
class Value:
    """One computed tensor for one group of samples; `tensor is None` means known zeros."""
    uid: int
    tensor: Optional[torch.Tensor]
    n: int


@dataclass(eq=False)
class CellOutput:
    """A cell's (or the stem's) output: the values of its output nodes, in concat order.
    `blocks` holds each value's position among the B node blocks (None: the stem, all channels)."""
    values: Tuple[Value, ...]
    blocks: Optional[Tuple[int, ...]]
    _joined: Optional[torch.Tensor] = None
    _joined_relu: Optional[torch.Tensor] = None

    @property
    def key(self):
        return (tuple(v.uid for v in self.values), self.blocks)

    def nonzero_blocks(self) -> Optional[Tuple[int, ...]]:
        """The node blocks of the non-zero output nodes (None for the stem: all its channels)."""
        if self.blocks is None:
            return None
        return tuple(blk for v, blk in zip(self.values, self.blocks) if v.tensor is not None)

    def tensors(self) -> List[torch.Tensor]:
        """The non-zero output nodes' tensors, in concat order."""
        return [v.tensor for v in self.values if v.tensor is not None]

    def joined(self) -> torch.Tensor:
        """The non-zero output nodes concatenated along channels, once: both the next cell (as its
        input 1) and the one after (as its input 0) preprocess it."""
        if self._joined is None:
            tensors = self.tensors()
            self._joined = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)
        return self._joined

    def joined_relu(self) -> torch.Tensor:
        """relu(joined()): every consumer (cell preprocessing) starts with this ReLU; one serves all."""
        if self._joined_relu is None:
            self._joined_relu = F.relu(self.joined())
        return self._joined_relu


def live_nodes(edges, outputs: Sequence[int]) -> set:
    """Nodes that reach the cell output through non-null edges."""
    live = set(outputs)
    for op, f, t in sorted(edges, key=lambda e: -e[2]):
        if t in live and op != "null":
            live.add(f)
    return live


class Supernet(nn.Module):
    # Distinct architectures run through the cells together when the engine does not concatenate
    # (on a CPU): all of them at once hold every one's activations at the same time (20 lanes of
    # the 4 x 4 policy step: 3 GB, and the page faults of fresh memory cost more than sharing
    # saves); a few at a time keep the working set small.
    LANES_AT_ONCE = 4
    # When scoring, a node's sum may be written into one of its edge outputs (see _run_cell);
    # False: always into a new tensor (bench/derive_breakdown.py compares the two).
    SUMS_IN_PLACE = True

    def __init__(self, family: Family, channels: int = 20, layers: int = 8, num_classes: int = 10,
                 stem_multiplier: int = 3):
        super().__init__()
        self.family, self.channels, self.layers = family, channels, layers
        self.primitives = tuple(family.primitives)
        b = family.num_nodes
        c_stem = stem_multiplier * channels
        self.stem = Stem(c_stem, affine=False, track=False)
        self.cells = nn.ModuleList()
        c_pp, c_p, c = c_stem, c_stem, channels
        reduction_prev = False
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            if reduction:
                c *= 2
            self.cells.append(SuperCell(self.primitives, b, c_pp, c_p, c, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, b * c, reduction
        self.classifier = nn.Linear(c_p, num_classes)

    # ----------------------------------------------------------------- public API
    def forward(self, x: torch.Tensor, arch: Genotype) -> torch.Tensor:
        """The sampled path: logits of one architecture on the whole batch."""
        return self.run([x], [(0, arch)])[0]

    def forward_shared(self, x: torch.Tensor, archs: Sequence[Genotype]) -> List[torch.Tensor]:
        """Logits of each architecture on the same samples, shared values computed once."""
        return self.run([x], [(0, a) for a in archs])

    def forward_routed(self, x: torch.Tensor, archs: Sequence[Genotype], sizes: Sequence[int]) -> torch.Tensor:
        """Group g of the batch (sizes[g] samples, in order) runs archs[g]; logits in batch order."""
        if sum(sizes) != x.shape[0] or len(sizes) != len(archs):
            raise ValueError(f"routing sizes {list(sizes)} do not match batch {x.shape[0]} and {len(archs)} architectures")
        parts = list(torch.split(x, list(sizes)))
        return torch.cat(self.run(parts, list(enumerate(archs))))

    # ----------------------------------------------------------------- engine
    def run(self, inputs: Sequence[torch.Tensor], lanes: Sequence[Tuple[int, Genotype]],
            concatenate: Optional[bool] = None, lanes_at_once: Optional[int] = None) -> List[torch.Tensor]:
        """Run each lane (input index, architecture); returns each lane's logits. `concatenate`:
        batch the distinct inputs of an op into one call (default: on CUDA only). `lanes_at_once`:
        how many distinct lanes go through the cells together (default: all when concatenating,
        else LANES_AT_ONCE); the stem is computed once for all."""
        self._check_archs([g for _, g in lanes])
        for x in inputs:
            check_images(x, self.classifier.weight)
        ctx = _RunContext(concatenate)
        stem_vals = ctx.batched(("stem",), [(("stem", i), x) for i, x in enumerate(inputs)],
                                lambda xs, groups: self.stem(xs, groups))
        stems = [CellOutput((v,), None) for v in stem_vals]
        # Identical lanes run once. Lanes sorted by their cells' genes sit next to the lanes they
        # share a prefix with, so running a few at a time loses little sharing.
        keys = [_lane_key(i, g) for i, g in lanes]
        distinct = sorted(dict(zip(keys, lanes)).items())
        if lanes_at_once is None:
            lanes_at_once = len(distinct) if ctx.concatenating(inputs[0]) else self.LANES_AT_ONCE
        count = -(-len(distinct) // max(1, lanes_at_once))
        # Chunks share no value past the stem's preprocessing: on a CPU, when scoring, they run
        # side by side, as many on each worker (so none idles at the end) and as even as can be.
        # (Lanes that fit one chunk stay together: beta and alpha of the m = n = 1 policy step,
        # split one to a worker, lost their shared cells and took 1.3x as long.)
        workers = lane_workers.worker_count(count, inputs[0])
        if workers > 1:
            count = min(len(distinct), -(-count // workers) * workers)
        chunks = _split_evenly(distinct, count)
        if len(chunks) > 1:
            self._preprocess_stems(ctx, [stems[i] for _, (i, _) in distinct], [g for _, (_, g) in distinct])

        def run_chunk(chunk) -> List[torch.Tensor]:
            own = ctx if len(chunks) == 1 else ctx.fork()
            return self._run_cells(own, [stems[i] for _, (i, _) in chunk], [g for _, (_, g) in chunk])

        logits = {}
        outs = lane_workers.run([functools.partial(run_chunk, chunk) for chunk in chunks], workers)
        for chunk, chunk_outs in zip(chunks, outs):
            logits.update((key, out) for (key, _), out in zip(chunk, chunk_outs))
        return [logits[key] for key in keys]

    def _run_cells(self, ctx, stems: Sequence["CellOutput"], archs: Sequence[Genotype]) -> List[torch.Tensor]:
        """Logits of each architecture from its stem output, all through each cell together."""
        states = [(stem, stem) for stem in stems]
        plans = self._plans(archs)
        for index, cell in enumerate(self.cells):
            outs = self._run_cell(ctx, index, [s[0] for s in states], [s[1] for s in states], plans)
            states = [(s[1], o) for s, o in zip(states, outs)]
            # Later keys name the values the lanes hold, not the memo: forget this cell's
            # intermediates so that (under inference) their memory is freed as the pass goes on.
            ctx.forget()
        return [self._classify(ctx, s[1]) for s in states]

    def _preprocess_stems(self, ctx, stems: Sequence["CellOutput"], archs: Sequence[Genotype]) -> None:
        """Cells 0 and 1 preprocess the stem output, the same for every lane of an input: done once
        here (cell 1's kept for it as the next cell's values) when the lanes go in several chunks,
        whose contexts start from these values."""
        plans = self._plans(archs)
        self._preprocess_cell_inputs(ctx, 0, stems, stems, plans)
        if len(self.cells) > 1:
            second = self.cells[1]
            with ctx.ahead():
                needed = [0 in live for live in plans[second.reduction].lives]
                self._preprocess(ctx, second.pre0, "pre0", 1, stems, needed)

    def _plans(self, archs: Sequence[Genotype]) -> Dict[bool, "_CellPlan"]:
        """Each kind of cell's plan (by `reduction`) for these lanes."""
        return {reduction: _CellPlan.of(archs, reduction, self.family) for reduction in (False, True)}

    def _check_archs(self, archs: Sequence[Genotype]) -> None:
        prims, b = set(self.primitives), self.family.num_nodes
        for g in archs:
            if not isinstance(g, Genotype):
                raise TypeError(f"an architecture must be a Genotype, got {type(g).__name__} "
                                f"(natfast.get_named(name)[0] or natfast.load_arch(path)[0] give one)")
            for edges in (g.normal, g.reduce):
                for op, f, t in edges:
                    if op not in prims or not (0 <= f < t <= b + 1):
                        raise ValueError(f"edge {(op, f, t)} does not fit this supernet "
                                         f"({self.family.name}, {b} nodes, ops {self.primitives})")

    def _preprocess(self, ctx, module, tag, index, outs: Sequence[CellOutput], needed: Sequence[bool],
                    ahead=None) -> List[Value]:
        """Preprocess each lane's input where the cell uses it. Zero nodes are dropped together with
        their weight columns: exact, since ReLU and the 1x1 convolutions map zeros to zeros.
        `ahead`: (the next cell's input-0 preprocessing, which lanes need it): it reads the same cell
        outputs, and where a fused kernel reads an input once for both, it runs now (kept for the
        next cell by the context)."""
        if ahead is not None and outs and self._preprocesses_ahead(ctx, module, ahead[0], outs):
            return self._preprocess_with_next(ctx, module, tag, index, outs, needed, *ahead)
        requests = []
        results: List[Optional[Value]] = [None] * len(outs)
        for lane, out in enumerate(outs):
            if not out.tensors() or not needed[lane]:
                results[lane] = ctx.zero(out.values[0].n)
                continue
            requests.append((lane, (tag, index, out.key), out, out.nonzero_blocks()))
        reads_nodes = None  # decided once: every lane's tensors share device and dtype
        # One batched call per distinct channel subset.
        for blocks, reqs in itertools.groupby(sorted(requests, key=lambda r: str(r[3])), key=lambda r: r[3]):
            reqs = list(reqs)
            like = next(v.tensor for v in reqs[0][2].values if v.tensor is not None)
            if reads_nodes is None:
                reads_nodes = self._reads_nodes_in_place(ctx, module, like)
            cidx = None if blocks is None else _channel_index(blocks, like)
            # A cell output's nodes as a list (read in place), or the CellOutput (read as the ReLU
            # of their concatenation, computed once for both cells that preprocess it).
            sources = [(key, out.tensors() if reads_nodes and out.blocks is not None else out)
                       for _, key, out, _ in reqs]
            vals = ctx.batched((tag, index, blocks), sources, functools.partial(_preprocess_call, module, cidx))
            for (lane, *_), v in zip(reqs, vals):
                results[lane] = v
        return results

    @staticmethod
    def _preprocesses_ahead(ctx, module, following, outs: Sequence[CellOutput]) -> bool:
        """Whether input 1's preprocessing and the next cell's input 0's run as one pass: when
        scoring (nothing is recorded for a backward) with a kernel that reads the input once for
        both (on a CPU: the measured gain is that of reading a cell output once instead of twice)."""
        like = next((t for out in outs for t in out.tensors()), None)
        if like is None or torch.is_grad_enabled() or ctx.concatenating(like):
            return False
        return fused.has_fused_cat_conv1x1_bn_each([like], [module.weight, following.weight])

    def _preprocess_with_next(self, ctx, module, tag, index, outs, needed, following, following_needed) -> List[Value]:
        """_preprocess, and for the cell outputs that both this cell and the next read, the next
        cell's input-0 preprocessing in the same pass (the context keeps it for that cell)."""
        results: List[Optional[Value]] = [None] * len(outs)
        wanted_next = {out.key for out, wanted in zip(outs, following_needed) if wanted}
        by_key: Dict[tuple, list] = {}
        for lane, out in enumerate(outs):
            if not out.tensors() or not needed[lane]:
                results[lane] = ctx.zero(out.values[0].n)
                continue
            by_key.setdefault(out.key, []).append(lane)
        for key, lanes in by_key.items():
            out = outs[lanes[0]]
            own_key, next_key = (tag, index, key), ("pre0", index + 1, key)
            value = ctx.memoised(own_key)
            if value is None:
                parts, blocks = out.tensors(), out.nonzero_blocks()
                cidx = None if blocks is None else _channel_index(blocks, parts[0])
                weights = [m.weight if cidx is None else m.weight.index_select(1, cidx) for m in (module, following)]
                if key in wanted_next and ctx.memoised(next_key, ahead=True) is None:
                    mine, theirs = fused.cat_conv1x1_bn_each(parts, weights, None, relu_input=True)
                    ctx.keep_ahead(next_key, theirs)
                else:
                    mine = fused.cat_conv1x1_bn(parts, weights[0], None, relu_input=True)
                value = ctx.keep(own_key, mine)
            for lane in lanes:
                results[lane] = value
        return results

    @staticmethod
    def _reads_nodes_in_place(ctx, module, like: torch.Tensor) -> bool:
        """Whether the preprocessing reads a cell output's node tensors in place: where a fused
        kernel does (a CPU with the C++ kernels), both consumers take the tensors (FactorizedReduce
        slices them before its ReLU) and the concatenation is never built."""
        if ctx.concatenating(like):
            return False
        weight = module.weight if isinstance(module, ReLUConvBN) else module.conv_a  # (its dtype)
        return fused.has_fused_cat_conv1x1_bn([like], weight, None)

    def _preprocess_cell_inputs(self, ctx, index: int, outs_pp, outs_p,
                                plans: Dict[bool, "_CellPlan"]) -> Tuple[List[Value], List[Value]]:
        """Cell `index`'s preprocessed inputs 0 and 1 of each lane (and, where one pass serves both,
        the next cell's input 0, which reads outs_p too: kept in ctx for that cell)."""
        cell = self.cells[index]
        lives = plans[cell.reduction].lives
        following = self.cells[index + 1] if index + 1 < len(self.cells) else None
        s0 = self._preprocess(ctx, cell.pre0, "pre0", index, outs_pp, [0 in live for live in lives])
        ahead = None
        if following is not None and isinstance(following.pre0, ReLUConvBN):
            ahead = (following.pre0, [0 in live for live in plans[following.reduction].lives])
        s1 = self._preprocess(ctx, cell.pre1, "pre1", index, outs_p, [1 in live for live in lives], ahead)
        return s0, s1

    def _run_cell(self, ctx, index: int, outs_pp, outs_p, plans: Dict[bool, "_CellPlan"]) -> List[CellOutput]:
        cell, b = self.cells[index], self.family.num_nodes
        genes, outputs, lives = plans[cell.reduction]
        s0, s1 = self._preprocess_cell_inputs(ctx, index, outs_pp, outs_p, plans)
        nodes = [{0: a, 1: c} for a, c in zip(s0, s1)]
        for t in range(2, b + 2):
            # Gather, per (from, op), the distinct inputs of all lanes whose node t is live.
            wanted: Dict[Tuple[int, str], Dict[int, Value]] = {}
            lane_edges: List[List[Tuple[int, str, Value]]] = [[] for _ in genes]
            for lane, (edges, _) in enumerate(genes):
                if t not in lives[lane]:
                    continue
                for op, f, tt in edges:
                    if tt != t or op == "null":
                        continue
                    v = nodes[lane][f]
                    if v.tensor is None:
                        continue
                    wanted.setdefault((f, op), {})[v.uid] = v
                    lane_edges[lane].append((f, op, v))
            results: Dict[Tuple[int, str, int], Value] = {}
            fresh = set()   # uids of edge outputs that are new tensors (not their input, as skips give)
            for (f, op), inputs in wanted.items():
                module = cell.edges[edge_key(f, t)][op]
                reqs = [(("edge", index, f, t, op, uid), v.tensor) for uid, v in inputs.items()]
                vals = ctx.batched(("edge", index, f, t, op), reqs, lambda xs, groups, m=module: m(xs, groups))
                for (uid, given), v in zip(inputs.items(), vals):
                    results[(f, op, uid)] = v
                    if not _same_storage(v.tensor, given.tensor):
                        fresh.add(v.uid)
            sums = {lane: [results[(f, op, v.uid)] for f, op, v in lane_edges[lane]]
                    for lane in range(len(genes)) if t in lives[lane]}
            # Edge outputs feed node t only, so one that is fresh and part of a single distinct sum
            # may hold that sum (when nothing is recorded for a backward): no new tensor to write.
            in_sums: Dict[int, set] = {}
            for contribs in sums.values():
                for v in contribs:
                    in_sums.setdefault(v.uid, set()).add(tuple(sorted(u.uid for u in contribs)))
            in_place = self.SUMS_IN_PLACE and not torch.is_grad_enabled()
            reusable = {u for u in fresh if len(in_sums.get(u, ())) == 1} if in_place else set()
            for lane, contribs in sums.items():
                nodes[lane][t] = ctx.node_sum(contribs, nodes[lane][0].n, reusable)
        return [CellOutput(tuple(nodes[lane][s] for s in outs), tuple(s - 2 for s in outs))
                for lane, outs in enumerate(outputs)]

    def _classify(self, ctx, out: CellOutput) -> torch.Tensor:
        parts = [(v, blk) for v, blk in zip(out.values, out.blocks) if v.tensor is not None]
        w, bias = self.classifier.weight, self.classifier.bias
        if not parts:
            return bias.expand(out.values[0].n, -1)
        pooled = torch.cat([ctx.pooled(v) for v, _ in parts], dim=1)
        blocks = tuple(blk for _, blk in parts)
        if blocks != tuple(range(self.family.num_nodes)):
            w = w.index_select(1, _channel_index(blocks, parts[0][0].tensor))
        return F.linear(pooled, w, bias)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _preprocess_call(module, channel_index, x, groups) -> torch.Tensor:
    """Cell preprocessing of x: a list of node tensors (read in place) or relu(their concatenation)."""
    if isinstance(x, list):
        return module.forward_parts(x, groups, channel_index)
    return module(x, groups, channel_index, relu_applied=True)


def _split_evenly(items: Sequence, count: int) -> List[Sequence]:
    """`items` in `count` consecutive runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), count)
    bounds = list(itertools.accumulate([0] + [size + (i < extra) for i in range(count)]))
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def _lane_key(input_index: int, g: Genotype) -> tuple:
    """A lane's identity, ordered by input, then normal cell, then reduction cell."""
    return (input_index, tuple(map(tuple, g.normal)), tuple(g.normal_concat), tuple(map(tuple, g.reduce)),
            tuple(g.reduce_concat))


def _channel_index(blocks: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Channel positions of the given node blocks inside the full concat of all B nodes."""
    c = like.shape[1]
    return torch.cat([torch.arange(b * c, (b + 1) * c) for b in blocks]).to(like.device)


class _RunContext:
    """Values computed during one `Supernet.run`, identified by what they are computed from."""

    def __init__(self, concatenate: Optional[bool] = None):
        # One call per op over all distinct inputs pays on a GPU (small launches become big ones);
        # on a CPU the copies cost more than the calls, so each distinct input runs on its own.
        self._concat_mode = concatenate
        self._uids = itertools.count()
        self._memo: Dict[tuple, Value] = {}
        self._ahead: Dict[tuple, Value] = {}  # the next cell's values, computed early
        self._pooled: Dict[int, torch.Tensor] = {}

    def fork(self) -> "_RunContext":
        """A context for one chunk of lanes (possibly run on another thread): its own memo, starting
        from this one's values (those computed for every chunk), and the same uid counter (uids stay
        unique across the run)."""
        other = _RunContext(self._concat_mode)
        other._uids = self._uids
        other._memo, other._ahead = dict(self._memo), dict(self._ahead)
        return other

    @contextlib.contextmanager
    def ahead(self) -> Iterator[None]:
        """Inside, values are the next cell's: computed into (and found in) what forget() keeps."""
        self._memo, self._ahead = self._ahead, self._memo
        try:
            yield
        finally:
            self._memo, self._ahead = self._ahead, self._memo

    def forget(self) -> None:
        """Done with a cell: its values go, but those computed ahead for the next cell stay."""
        self._memo, self._ahead = self._ahead, {}

    def memoised(self, key, ahead: bool = False) -> Optional[Value]:
        return (self._ahead if ahead else self._memo).get(key)

    def keep(self, key, tensor: torch.Tensor) -> Value:
        self._memo[key] = Value(next(self._uids), tensor, tensor.shape[0])
        return self._memo[key]

    def keep_ahead(self, key, tensor: torch.Tensor) -> None:
        """A value of the next cell's, computed now (see forget)."""
        self._ahead[key] = Value(next(self._uids), tensor, tensor.shape[0])

    def concatenating(self, like: torch.Tensor) -> bool:
        return like.is_cuda if self._concat_mode is None else self._concat_mode

    def zero(self, n: int) -> Value:
        return Value(-1, None, n)

    def batched(self, tag, requests, fn) -> List[Value]:
        """Compute `fn` once for every distinct request (key, input: a tensor or a CellOutput),
        with per-request BN groups (one call over the concatenated batch, or one call each)."""
        out: List[Optional[Value]] = []
        todo = {}
        for key, source in requests:
            if key in self._memo:
                out.append(self._memo[key])
            else:
                todo.setdefault(key, source)
                out.append(None)
        if todo:
            # A source is a tensor, a CellOutput (read as the ReLU of its nodes' concatenation), or
            # a list of node tensors that fn reads in place (never concatenated across requests).
            inputs = [src.joined_relu() if isinstance(src, CellOutput) else src for src in todo.values()]
            sizes = [(x[0] if isinstance(x, list) else x).shape[0] for x in inputs]
            if len(inputs) == 1 or isinstance(inputs[0], list) or not self.concatenating(inputs[0]):
                parts = [fn(x, (n,)) for x, n in zip(inputs, sizes)]
            else:
                parts = torch.split(fn(torch.cat(inputs), tuple(sizes)), sizes)
            for key, part in zip(todo, parts):
                self._memo[key] = Value(next(self._uids), part, part.shape[0])
        return [v if v is not None else self._memo[key] for v, (key, _) in zip(out, requests)]

    def node_sum(self, contribs: List[Value], n: int, reusable: AbstractSet[int] = frozenset()) -> Value:
        """The sum of contribs, in their order; an input whose uid is in `reusable` may be
        overwritten with it (the first, or either of two: a + b == b + a exactly, so the sum is
        the same as out of place)."""
        if not contribs:
            return self.zero(n)
        key = ("node",) + tuple(sorted(v.uid for v in contribs))
        if key not in self._memo:
            if len(contribs) == 1:
                self._memo[key] = contribs[0]
                return contribs[0]
            if len(contribs) == 2 and contribs[0].uid not in reusable and contribs[1].uid in reusable:
                contribs = contribs[::-1]
            if contribs[0].uid in reusable:
                total = contribs[0].tensor
                for v in contribs[1:]:
                    total.add_(v.tensor)
            else:
                total = contribs[0].tensor + contribs[1].tensor
                for v in contribs[2:]:
                    total.add_(v.tensor)
            self._memo[key] = Value(next(self._uids), total, n)
        return self._memo[key]

    def pooled(self, v: Value) -> torch.Tensor:
        if v.uid not in self._pooled:
            self._pooled[v.uid] = v.tensor.mean(dim=(2, 3))
        return self._pooled[v.uid]
