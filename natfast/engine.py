"""The supernet's execution engine: any number of architectures through one supernet in one pass.

How a single sampled cell runs is natfast/cell_plan.py's; this module adds what running many of them
together needs (the modules themselves are natfast/supernet.py's):

* each architecture is a *lane* bound to a group of input samples (its own samples, or samples
  shared with other lanes);
* every value (stem output, preprocessed input, edge output, node) is identified by what it is
  computed from, so values that are identical across lanes are computed once (prefix sharing:
  the stem always, whole cells and single nodes while the architectures agree);
* at each edge, every candidate op runs once on all distinct inputs routed to it, concatenated,
  with BN statistics per input (so each lane gets exactly what it would get alone);
* what the cell plan does not run (null edges, dead nodes) is never executed, and edges reading
  known-zero nodes (BN affine=False maps zeros to zeros) neither;
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
from typing import TYPE_CHECKING, AbstractSet, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import lane_workers
from .cell_plan import CellPlan, edge_key, plan_of
from .genotype import Genotype
from .inputs import check_images
from .ops import fused
from .ops.layers import ReLUConvBN

if TYPE_CHECKING:
    from .supernet import Supernet


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


def run(net: "Supernet", inputs: Sequence[torch.Tensor], lanes: Sequence[Tuple[int, Genotype]],
        concatenate: Optional[bool] = None, lanes_at_once: Optional[int] = None) -> List[torch.Tensor]:
    """Run each lane (input index, architecture); returns each lane's logits. `concatenate`:
    batch the distinct inputs of an op into one call (default: on CUDA only). `lanes_at_once`:
    how many distinct lanes go through the cells together (default: all when concatenating,
    else LANES_AT_ONCE); the stem is computed once for all."""
    net.check_archs([g for _, g in lanes])
    for x in inputs:
        check_images(x, net.classifier.weight)
    ctx = RunContext(concatenate)
    stem_vals = ctx.batched(("stem",), [(("stem", i), x) for i, x in enumerate(inputs)],
                            lambda xs, groups: net.stem(xs, groups))
    stems = [CellOutput((v,), None) for v in stem_vals]
    # Identical lanes run once. Lanes sorted by their cells' genes sit next to the lanes they
    # share a prefix with, so running a few at a time loses little sharing.
    keys = [_lane_key(i, g) for i, g in lanes]
    distinct = sorted(dict(zip(keys, lanes)).items())
    if lanes_at_once is None:
        lanes_at_once = len(distinct) if ctx.concatenating(inputs[0]) else net.LANES_AT_ONCE
    count = -(-len(distinct) // max(1, lanes_at_once))
    # Chunks share no value past the stem's preprocessing: on a CPU, when scoring, they run
    # side by side, as many on each worker (so none idles at the end) and as even as can be.
    # (Lanes that fit one chunk stay together: beta and alpha of the m = n = 1 policy step,
    # split one to a worker, lost their shared cells and took 1.3x as long.)
    workers = lane_workers.worker_count(count, inputs[0])
    if workers > 1:
        count = min(len(distinct), -(-count // workers) * workers)
    chunks = split_evenly(distinct, count)
    if len(chunks) > 1:
        _preprocess_stems(net, ctx, [stems[i] for _, (i, _) in distinct], [g for _, (_, g) in distinct])

    def run_chunk(chunk) -> List[torch.Tensor]:
        own = ctx if len(chunks) == 1 else ctx.fork()
        return _run_cells(net, own, [stems[i] for _, (i, _) in chunk], [g for _, (_, g) in chunk])

    logits = {}
    outs = lane_workers.run([functools.partial(run_chunk, chunk) for chunk in chunks], workers)
    for chunk, chunk_outs in zip(chunks, outs):
        logits.update((key, out) for (key, _), out in zip(chunk, chunk_outs))
    return [logits[key] for key in keys]


def _run_cells(net, ctx, stems: Sequence["CellOutput"], archs: Sequence[Genotype]) -> List[torch.Tensor]:
    """Logits of each architecture from its stem output, all through each cell together."""
    states = [(stem, stem) for stem in stems]
    plans = _plans(net, archs)
    for index, cell in enumerate(net.cells):
        outs = _run_cell(net, ctx, index, [s[0] for s in states], [s[1] for s in states], plans)
        states = [(s[1], o) for s, o in zip(states, outs)]
        # Later keys name the values the lanes hold, not the memo: forget this cell's
        # intermediates so that (under inference) their memory is freed as the pass goes on.
        ctx.forget()
    return [_classify(net, ctx, s[1]) for s in states]


def _preprocess_stems(net, ctx, stems: Sequence["CellOutput"], archs: Sequence[Genotype]) -> None:
    """Cells 0 and 1 preprocess the stem output, the same for every lane of an input: done once
    here (cell 1's kept for it as the next cell's values) when the lanes go in several chunks,
    whose contexts start from these values."""
    plans = _plans(net, archs)
    _preprocess_cell_inputs(net, ctx, 0, stems, stems, plans)
    if len(net.cells) > 1:
        second = net.cells[1]
        with ctx.ahead():
            needed = [plan.needs_input(0) for plan in plans[second.reduction]]
            _preprocess(net, ctx, second.pre0, "pre0", 1, stems, needed)


def _plans(net, archs: Sequence[Genotype]) -> Dict[bool, List[CellPlan]]:
    """Each lane's cell plan, per kind of cell (by `reduction`: every cell of a kind has the same)."""
    return {reduction: [plan_of(g, net.family, reduction) for g in archs] for reduction in (False, True)}


def _preprocess(net, ctx, module, tag, index, outs: Sequence[CellOutput], needed: Sequence[bool],
                ahead=None) -> List[Value]:
    """Preprocess each lane's input where the cell uses it. Zero nodes are dropped together with
    their weight columns: exact, since ReLU and the 1x1 convolutions map zeros to zeros.
    `ahead`: (the next cell's input-0 preprocessing, which lanes need it): it reads the same cell
    outputs, and where a fused kernel reads an input once for both, it runs now (kept for the
    next cell by the context)."""
    if ahead is not None and outs and _preprocesses_ahead(ctx, module, ahead[0], outs):
        return _preprocess_with_next(net, ctx, module, tag, index, outs, needed, *ahead)
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
            reads_nodes = _reads_nodes_in_place(ctx, module, like)
        cidx = None if blocks is None else _channel_index(blocks, like)
        # A cell output's nodes as a list (read in place), or the CellOutput (read as the ReLU
        # of their concatenation, computed once for both cells that preprocess it).
        sources = [(key, out.tensors() if reads_nodes and out.blocks is not None else out)
                   for _, key, out, _ in reqs]
        vals = ctx.batched((tag, index, blocks), sources, functools.partial(_preprocess_call, module, cidx))
        for (lane, *_), v in zip(reqs, vals):
            results[lane] = v
    return results


def _preprocesses_ahead(ctx, module, following, outs: Sequence[CellOutput]) -> bool:
    """Whether input 1's preprocessing and the next cell's input 0's run as one pass: when
    scoring (nothing is recorded for a backward) with a kernel that reads the input once for
    both (on a CPU: the measured gain is that of reading a cell output once instead of twice)."""
    like = next((t for out in outs for t in out.tensors()), None)
    if like is None or torch.is_grad_enabled() or ctx.concatenating(like):
        return False
    return fused.has_fused_cat_conv1x1_bn_each([like], [module.weight, following.weight])


def _preprocess_with_next(net, ctx, module, tag, index, outs, needed, following, following_needed) -> List[Value]:
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


def _reads_nodes_in_place(ctx, module, like: torch.Tensor) -> bool:
    """Whether the preprocessing reads a cell output's node tensors in place: where a fused
    kernel does (a CPU with the C++ kernels), both consumers take the tensors (FactorizedReduce
    slices them before its ReLU) and the concatenation is never built."""
    if ctx.concatenating(like):
        return False
    weight = module.weight if isinstance(module, ReLUConvBN) else module.conv_a  # (its dtype)
    return fused.has_fused_cat_conv1x1_bn([like], weight, None)


def _preprocess_cell_inputs(net, ctx, index: int, outs_pp, outs_p,
                            plans: Dict[bool, List[CellPlan]]) -> Tuple[List[Value], List[Value]]:
    """Cell `index`'s preprocessed inputs 0 and 1 of each lane (and, where one pass serves both,
    the next cell's input 0, which reads outs_p too: kept in ctx for that cell)."""
    cell = net.cells[index]
    lanes = plans[cell.reduction]
    following = net.cells[index + 1] if index + 1 < len(net.cells) else None
    s0 = _preprocess(net, ctx, cell.pre0, "pre0", index, outs_pp, [plan.needs_input(0) for plan in lanes])
    ahead = None
    if following is not None and isinstance(following.pre0, ReLUConvBN):
        ahead = (following.pre0, [plan.needs_input(0) for plan in plans[following.reduction]])
    s1 = _preprocess(net, ctx, cell.pre1, "pre1", index, outs_p, [plan.needs_input(1) for plan in lanes], ahead)
    return s0, s1


def _run_cell(net, ctx, index: int, outs_pp, outs_p, plans: Dict[bool, List[CellPlan]]) -> List[CellOutput]:
    cell, b = net.cells[index], net.family.num_nodes
    lanes = plans[cell.reduction]
    s0, s1 = _preprocess_cell_inputs(net, ctx, index, outs_pp, outs_p, plans)
    nodes = [{0: a, 1: c} for a, c in zip(s0, s1)]
    for t in range(2, b + 2):
        # Gather, per (from, op), the distinct inputs of all lanes whose node t is live.
        wanted: Dict[Tuple[int, str], Dict[int, Value]] = {}
        lane_edges: List[List[Tuple[int, str, Value]]] = [[] for _ in lanes]
        for lane, plan in enumerate(lanes):
            for slot in plan.into(t):
                v = nodes[lane][slot.source]
                if v.tensor is None:   # a known zero: the edge's output is zero too
                    continue
                wanted.setdefault((slot.source, slot.op), {})[v.uid] = v
                lane_edges[lane].append((slot.source, slot.op, v))
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
                for lane, plan in enumerate(lanes) if t in plan.live}
        # Edge outputs feed node t only, so one that is fresh and part of a single distinct sum
        # may hold that sum (when nothing is recorded for a backward): no new tensor to write.
        in_sums: Dict[int, set] = {}
        for contribs in sums.values():
            for v in contribs:
                in_sums.setdefault(v.uid, set()).add(tuple(sorted(u.uid for u in contribs)))
        in_place = net.SUMS_IN_PLACE and not torch.is_grad_enabled()
        reusable = {u for u in fresh if len(in_sums.get(u, ())) == 1} if in_place else set()
        for lane, contribs in sums.items():
            nodes[lane][t] = ctx.node_sum(contribs, nodes[lane][0].n, reusable)
    return [CellOutput(tuple(nodes[lane][s] for s in plan.outputs), tuple(s - 2 for s in plan.outputs))
            for lane, plan in enumerate(lanes)]


def _classify(net, ctx, out: CellOutput) -> torch.Tensor:
    parts = [(v, blk) for v, blk in zip(out.values, out.blocks) if v.tensor is not None]
    w, bias = net.classifier.weight, net.classifier.bias
    if not parts:
        return bias.expand(out.values[0].n, -1)
    pooled = torch.cat([ctx.pooled(v) for v, _ in parts], dim=1)
    blocks = tuple(blk for _, blk in parts)
    if blocks != tuple(range(net.family.num_nodes)):
        w = w.index_select(1, _channel_index(blocks, parts[0][0].tensor))
    return F.linear(pooled, w, bias)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _preprocess_call(module, channel_index, x, groups) -> torch.Tensor:
    """Cell preprocessing of x: a list of node tensors (read in place) or relu(their concatenation)."""
    if isinstance(x, list):
        return module.forward_parts(x, groups, channel_index)
    return module(x, groups, channel_index, relu_applied=True)


def split_evenly(items: Sequence, count: int) -> List[Sequence]:
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


class RunContext:
    """Values computed during one `Supernet.run`, identified by what they are computed from."""

    def __init__(self, concatenate: Optional[bool] = None):
        # One call per op over all distinct inputs pays on a GPU (small launches become big ones);
        # on a CPU the copies cost more than the calls, so each distinct input runs on its own.
        self._concat_mode = concatenate
        self._uids = itertools.count()
        self._memo: Dict[tuple, Value] = {}
        self._ahead: Dict[tuple, Value] = {}  # the next cell's values, computed early
        self._pooled: Dict[int, torch.Tensor] = {}

    def fork(self) -> "RunContext":
        """A context for one chunk of lanes (possibly run on another thread): its own memo, starting
        from this one's values (those computed for every chunk), and the same uid counter (uids stay
        unique across the run)."""
        other = RunContext(self._concat_mode)
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
