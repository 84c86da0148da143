"""The graph engine's training step (update_w): the same launches for every sampled genotype.

    engine = GraphEngine(supernet, lr=0.025, momentum=0.9, weight_decay=3e-4, max_norm=5.0)
    loss, acc = engine.step(x, y, genotype)      # device tensors

A step: write the genotype's slot table and used-parameter flags (natfast/graph/table.py), zero the
flat gradient, forward (natfast/graph/network.py), cross-entropy, backward, and the masked SGD of
natfast/flat_params.py (clip, weight decay, momentum on exactly the parameters eager PyTorch would
give a gradient). Nothing in it reads a value on the host, so on CUDA the whole step is captured as
one CUDA graph per batch shape and learning rate and replayed for every genotype (`capture=True`,
the default there); elsewhere, and with the reference backend, it runs eagerly.

`engine.scorer(lanes)` scores many architectures at once on the same parameters (the policy step's
rewards, derive's ranking): natfast/graph/scoring.py.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..flat_params import FlatParameters, MaskedSGD
from ..genotype import Genotype
from .cuda_graph import capture
from .network import GraphNetwork
from .scoring import LaneScorer
from .table import SlotTable

# The op kinds the graph cell kernels run (every op of the supernet families, NAT++'s included).
SUPPORTED_KINDS = ("null", "skip", "max_pool", "avg_pool", "sep_conv", "dil_conv", "conv")


def check_supernet(supernet) -> None:
    """The graph engine runs the supernet families (DARTS, ENAS, their NAT++ op sets)."""
    from ..cell_plan import spec
    family = supernet.family
    unknown = [op for op in family.primitives if spec(op).kind not in SUPPORTED_KINDS]
    if unknown:
        raise ValueError(f"the graph engine has no kernels for {', '.join(unknown)}; use --engine eager")


# Whether the graph engine has passed bench/gpu_check.sh's graph stage on a GPU (equal to eager
# update_w, faster): until then `--engine auto` keeps the eager engines.
VALIDATED_ON_GPU = False


def available(device: torch.device) -> Optional[str]:
    """None when the graph engine's Triton kernels can run on `device`, else why not."""
    from ..ops.backends import load_all
    from ..ops.backends import triton as triton_backend
    status = load_all().get("triton", "not loaded")
    if not status.startswith("active"):
        return f"the Triton backend is {status}"
    if torch.device(device).type != "cuda" and not triton_backend.interpreting():
        return ("its kernels are Triton: they run on CUDA, or on a CPU in Triton's interpreter "
                "(NATFAST_TRITON_INTERPRET=1; slow, for tests)")
    return None


def chosen(engine: str, device: torch.device, supernet) -> bool:
    """Whether `--engine` (auto, graph, eager) runs update_w on the graph engine; a clear error
    when graph is asked for and cannot run."""
    if engine == "eager":
        return False
    if engine == "auto":
        return VALIDATED_ON_GPU and torch.device(device).type == "cuda" and available(device) is None and \
            _supported(supernet) is None
    if engine != "graph":
        raise ValueError(f"engine must be auto, graph or eager, got {engine!r}")
    why = available(device) or _supported(supernet)
    if why:
        raise ValueError(f"--engine graph cannot run: {why}")
    return True


def _supported(supernet) -> Optional[str]:
    try:
        check_supernet(supernet)
    except ValueError as exc:
        return str(exc)
    return None


class GraphEngine:
    def __init__(self, supernet, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, max_norm: float = 0.0,
                 backend: str = "triton", capture: Optional[bool] = None):
        check_supernet(supernet)
        self.supernet = supernet
        device = next(supernet.parameters()).device
        self.flat = FlatParameters(list(supernet.parameters()))
        self.table = SlotTable(supernet, self.flat, device)
        self.network = GraphNetwork(supernet, self.flat, self.table, backend)
        self.sgd = MaskedSGD(self.flat, lr, momentum, weight_decay, max_norm)
        self.capture = (device.type == "cuda" and backend == "triton") if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError("capture needs CUDA")
        self._graphs: Dict[tuple, "_Captured"] = {}
        self._scorers: Dict[int, LaneScorer] = {}

    def scorer(self, lanes: int) -> LaneScorer:
        """A LaneScorer of `lanes` lanes on this engine's parameters (natfast/graph/scoring.py): the
        policy step's and derive's accuracies, one launch sequence for every set of architectures."""
        if lanes not in self._scorers:
            self._scorers[lanes] = LaneScorer(self.supernet, lanes, self.flat, self.network.backend, self.capture)
        return self._scorers[lanes]

    def set_lr(self, lr: float) -> None:
        """A new learning rate: the next step captures again (the rate is baked into the graph)."""
        if lr != self.sgd.lr:
            self.sgd.lr = lr
            self._graphs.clear()

    def logits(self, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
        self.table.write(genotype)
        return self.network(x)

    def step(self, x: torch.Tensor, y: torch.Tensor, genotype: Genotype) -> Tuple[torch.Tensor, torch.Tensor]:
        """One update_w step; returns (loss, accuracy) as device tensors."""
        self.table.write(genotype)
        if not self.capture:
            return self._step(x, y)
        key = (tuple(x.shape), x.dtype, self.sgd.lr)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = _Captured.make(self, x, y)
        return captured.replay(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.flat.zero_grad()
        logits = self.network(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.sgd.step(self.table.used)
        return loss.detach(), (logits.detach().argmax(1) == y).float().mean()


class _Captured:
    """One update_w captured as a CUDA graph with static inputs."""

    def __init__(self, graph, x, y, loss, acc):
        self.graph, self.x, self.y, self.loss, self.acc = graph, x, y, loss, acc

    @classmethod
    def make(cls, engine: GraphEngine, x: torch.Tensor, y: torch.Tensor) -> "_Captured":
        static_x, static_y = x.clone(), y.clone()
        # The warm-up steps are undone: the parameters and momentum are restored, so capturing
        # changes no training state.
        saved = (engine.flat.data.clone(), engine.sgd.buf.clone(), engine.sgd.started.clone())
        graph, (loss, acc) = capture(lambda: engine._step(static_x, static_y))
        engine.flat.data.copy_(saved[0])
        engine.sgd.buf.copy_(saved[1])
        engine.sgd.started.copy_(saved[2])
        return cls(graph, static_x, static_y, loss, acc)

    def replay(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss, self.acc
