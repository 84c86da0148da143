"""Many architectures scored at once on the graph engine's kernels: the accuracies update_theta
rewards and derive ranks, with the shared weights.

    scorer = LaneScorer(supernet, lanes=11)      # or GraphEngine.scorer(11): shares its flat buffer
    accs = scorer.accuracies(x, y, archs)        # (len(archs),) float32 on x's device

Lane l of every launch runs architecture l (kernels/graph_forward.py's lane axis): the stem once,
then per lane the cell preprocessing (ATen, BN statistics per lane over its own samples), the
cells (their slot tables side by side, natfast/graph/table.py), the output-node mask and the
classifier. The result equals the eager supernet's forward of each architecture on the batch, as
natfast.search.score_batch computes it, to float32 rounding.

The launches do not depend on the architectures, so on CUDA the whole scoring pass is captured
once per batch shape and replayed (per batch the host writes the table and copies the batch). More
architectures than lanes run in chunks of `lanes`, the last padded with copies of its last
architecture, so every chunk replays the same graph. Forward only: one set of cell buffers per cell
shape, shared by the cells of that shape (a cell's output is consumed into a new tensor by the
output mask before the next cell writes).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..flat_params import FlatParameters
from ..genotype import Genotype
from ..ops.layers import FactorizedReduce
from . import reference
from .buffers import CellBuffers, CellShape
from .cuda_graph import capture
from .network import EPS
from .table import SlotTable


# The most lanes the search and derive give one scorer (more architectures run in chunks): every lane
# has its own cell buffers, about 0.5 GiB at the search size (batch 64, C = 20, 8 cells, 32x32).
MAX_LANES = 16


def preprocess_lanes(module, s: torch.Tensor) -> torch.Tensor:
    """A cell's preprocessing of (lanes, N, C, H, W), BN statistics per lane (the engine's
    natfast.graph.network.preprocess, lane by lane)."""
    lanes, n = s.shape[:2]
    r = F.relu(s.flatten(0, 1))
    if isinstance(module, FactorizedReduce):
        y = torch.cat([F.conv2d(r[:, :, ::2, ::2], module.conv_a), F.conv2d(r[:, :, 1::2, 1::2], module.conv_b)], 1)
    else:
        y = F.conv2d(r, module.weight)
    y = y.view(lanes, n, *y.shape[1:])
    var, mean = torch.var_mean(y, dim=(1, 3, 4), keepdim=True, correction=0)
    return (y - mean) * torch.rsqrt(var + EPS)


class LaneScorer:
    def __init__(self, supernet, lanes: int, flat: Optional[FlatParameters] = None, backend: str = "triton",
                 capture: Optional[bool] = None):
        from .engine import check_supernet
        check_supernet(supernet)
        if backend not in ("triton", "reference"):
            raise ValueError(f"graph backend must be 'triton' or 'reference', got {backend!r}")
        device = next(supernet.parameters()).device
        self.supernet, self.lanes, self.backend = supernet, lanes, backend
        self.flat = flat if flat is not None else FlatParameters(list(supernet.parameters()))
        self.table = SlotTable(supernet, self.flat, device, lanes=lanes)
        self.capture = (device.type == "cuda" and backend == "triton") if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError("capture needs CUDA")
        self._param_at = {o: p for p, o in zip(self.flat.params, self.flat.offsets)}
        self._buffers: Dict[tuple, CellBuffers] = {}
        self._graphs: Dict[tuple, "_CapturedScores"] = {}
        self._written: Optional[Tuple[Genotype, ...]] = None

    def accuracies(self, x: torch.Tensor, y: torch.Tensor, archs: Sequence[Genotype]) -> torch.Tensor:
        """Each architecture's accuracy on (x, y): (len(archs),) on x's device, not read back."""
        archs = list(archs)
        if not archs:
            raise ValueError("no architectures to score")
        self.supernet.check_archs(archs)
        scores = []
        for start in range(0, len(archs), self.lanes):
            chunk = archs[start:start + self.lanes]
            self._write(chunk + [chunk[-1]] * (self.lanes - len(chunk)))
            scores.append(self._accuracies(x, y)[:len(chunk)].clone())
        return torch.cat(scores)

    def logits(self, x: torch.Tensor, archs: Sequence[Genotype]) -> torch.Tensor:
        """(lanes, N, classes): the logits of exactly `lanes` architectures (not captured)."""
        self.supernet.check_archs(archs)
        self._write(list(archs))
        with torch.no_grad():
            return self._logits(x)

    def _write(self, archs: List[Genotype]) -> None:
        key = tuple(archs)
        if key != self._written:  # derive scores the same architectures batch after batch
            self.table.write(archs)
            self._written = key

    def _accuracies(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            with torch.no_grad():
                return _accuracy(self._logits(x), y)
        key = (tuple(x.shape), x.dtype, tuple(y.shape))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = _CapturedScores.make(self, x, y)
        return captured.replay(x, y)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        net = self.supernet
        s0 = s1 = F.batch_norm(F.conv2d(x, net.stem.conv.weight, None, 1, 1), None, None,
                               training=True, eps=EPS).unsqueeze(0)  # one lane: the same for all
        rows = self.table.slots.cpu().tolist() if self.backend == "reference" else None
        h, w = x.shape[2], x.shape[3]
        for i, cell in enumerate(net.cells):
            x0, x1 = preprocess_lanes(cell.pre0, s0), preprocess_lanes(cell.pre1, s1)
            if cell.reduction and (h % 2 or w % 2):
                raise ValueError(f"a reduction cell needs even feature maps, got {h}x{w} (input {tuple(x.shape)})")
            shape = CellShape(x.shape[0], cell.channels, net.family.num_nodes, h, w, cell.reduction)
            if rows is None:
                from .triton_forward import cell_forward
                out = cell_forward(self._cell_buffers(shape, x.device), x0, x1, self.flat.data, self.table.slots[i])
            else:
                out = torch.stack([reference.cell_forward(x0[min(l, len(x0) - 1)], x1[min(l, len(x1) - 1)],
                                                          self._weight_at, rows[i][l], cell.reduction)
                                   for l in range(self.lanes)])
            s0, s1 = s1, self._output_nodes_only(out, i)
            h, w = shape.h, shape.w
        return F.linear(s1.mean((3, 4)), net.classifier.weight, net.classifier.bias)

    def _cell_buffers(self, shape: CellShape, device) -> CellBuffers:
        key = (shape.n, shape.c, shape.nodes, shape.h_in, shape.w_in, shape.reduction, device)
        if key not in self._buffers:
            self._buffers[key] = CellBuffers(shape, device, lanes=self.lanes)
        return self._buffers[key]

    def _output_nodes_only(self, out: torch.Tensor, layer: int) -> torch.Tensor:
        lanes, n, width, h, w = out.shape
        nodes = self.table.outputs.shape[-1]
        mask = self.table.outputs[layer].view(lanes, 1, nodes, 1, 1, 1)
        return (out.view(lanes, n, nodes, width // nodes, h, w) * mask).view(lanes, n, width, h, w)

    def _weight_at(self, offset: int, shape) -> torch.Tensor:
        return self._param_at[offset].view(shape)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == y).float().mean(-1)


class _CapturedScores:
    """One scoring pass captured as a CUDA graph with static inputs."""

    def __init__(self, graph, x, y, acc):
        self.graph, self.x, self.y, self.acc = graph, x, y, acc

    @classmethod
    def make(cls, scorer: LaneScorer, x: torch.Tensor, y: torch.Tensor) -> "_CapturedScores":
        static_x, static_y = x.clone(), y.clone()

        def score():
            with torch.no_grad():
                return _accuracy(scorer._logits(static_x), static_y)

        graph, acc = capture(score)
        return cls(graph, static_x, static_y, acc)

    def replay(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.acc
