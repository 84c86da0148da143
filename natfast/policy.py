"""The transformation policy pi(alpha | beta): a GCN over the cell graph (and two ablation
baselines, an LSTM policy and random transformations).

For each intermediate node the policy gives, for each of its two incoming edges, logits over the
target operations; transitions the rule forbids are masked out of the softmax. Normal and
reduction cells are transformed by the same policy, separately (as a batch of graphs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from .genotype import Genotype
from .ops.gcn import gcn_policy_logits
from .ops.policy_sample import masked_sample
from .transitions import transition_mask

Edges = Sequence[Tuple[str, int, int]]


@dataclass
class Transformation:
    """Sampled (or argmax) targets for a batch of cells, with what REINFORCE needs."""
    targets: torch.Tensor    # (B, E) target op index per edge
    log_prob: torch.Tensor   # (B,) sum over edges
    entropy: torch.Tensor    # (B,) sum over edges


def encode_cells(cells: Sequence[Edges], primitives: Sequence[str], device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(op ids (B, E), from ids (B, E), raw adjacency (B, N, N) with A[t, f] = 1 for an edge f -> t)."""
    index = {p: i for i, p in enumerate(primitives)}
    ops = torch.tensor([[index[op] for op, _, _ in cell] for cell in cells], dtype=torch.long)
    frm = torch.tensor([[f for _, f, _ in cell] for cell in cells], dtype=torch.long)
    to = torch.tensor([[t for _, _, t in cell] for cell in cells], dtype=torch.long)
    n = int(to.max()) + 1
    adj = torch.zeros(len(cells), n, n)
    b_idx = torch.arange(len(cells)).unsqueeze(1).expand_as(frm)
    adj[b_idx, to, frm] = 1.0
    return ops.to(device), frm.to(device), adj.to(device)


def normalize_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 (Kipf & Welling), row degrees of the directed graph."""
    a = adj + torch.eye(adj.shape[-1], device=adj.device)
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class BasePolicy(nn.Module):
    """Shared machinery: masking by the transition rule, sampling, argmax, applying targets."""

    def __init__(self, primitives: Sequence[str], rule: str):
        super().__init__()
        self.primitives = tuple(primitives)
        self.rule = rule
        self.register_buffer("mask", transition_mask(self.primitives, rule), persistent=False)

    def edge_logits(self, cells: Sequence[Edges]) -> torch.Tensor:
        """(B, E, P) unmasked logits of every edge's target op."""
        return self._edge_logits(*encode_cells(cells, self.primitives, self.mask.device))

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logits_and_mask(self, cells: Sequence[Edges]) -> Tuple[torch.Tensor, torch.Tensor]:
        ops, frm, adj = encode_cells(cells, self.primitives, self.mask.device)
        logits = self._edge_logits(ops, frm, adj)
        return logits, self.mask[ops]                # (B, E, P) each

    def masked_logits(self, cells: Sequence[Edges]) -> torch.Tensor:
        logits, allowed = self._logits_and_mask(cells)
        return logits.masked_fill(~allowed, float("-inf"))

    def sample(self, cells: Sequence[Edges], generator: torch.Generator, num_samples: int = 1) -> List[Transformation]:
        """`num_samples` independent transformations of every cell from one policy forward pass.
        The uniforms come from the CPU `generator`, so a run is reproducible on any device."""
        logits, allowed = self._logits_and_mask(cells)
        b, e, p = logits.shape
        logits = logits.unsqueeze(0).expand(num_samples, b, e, p)
        uniform = torch.rand(num_samples, b, e, generator=generator).to(logits.device)
        targets, log_p, entropy = masked_sample(logits, allowed.unsqueeze(0).expand_as(logits), uniform)
        return [Transformation(targets[i], log_p[i].sum(-1), entropy[i].sum(-1)) for i in range(num_samples)]

    def evaluate(self, cells: Sequence[Edges], targets: torch.Tensor) -> Transformation:
        """log pi and entropy of given targets (B, E): what REINFORCE differentiates."""
        logits, allowed = self._logits_and_mask(cells)
        log_p = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        _, _, entropy = masked_sample(logits, allowed)
        chosen = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return Transformation(targets, chosen.sum(-1), entropy.sum(-1))

    def argmax(self, cells: Sequence[Edges]) -> Transformation:
        logits, allowed = self._logits_and_mask(cells)
        targets, log_p, entropy = masked_sample(logits, allowed)
        return Transformation(targets, log_p.sum(-1), entropy.sum(-1))

    def apply(self, cell: Edges, targets: torch.Tensor) -> List[Tuple[str, int, int]]:
        return [(self.primitives[int(k)], f, t) for (_, f, t), k in zip(cell, targets.tolist())]

    def transform(self, beta: Genotype, generator: torch.Generator) -> Tuple[Genotype, torch.Tensor, torch.Tensor]:
        """Sample alpha ~ pi(.|beta); returns (alpha, log pi(alpha), entropy), normal+reduce summed."""
        tr = self.sample([beta.normal, beta.reduce], generator)[0]
        return self.to_genotype(beta, tr.targets), tr.log_prob.sum(), tr.entropy.sum()

    def to_genotype(self, beta: Genotype, targets: torch.Tensor) -> Genotype:
        return beta._replace(normal=self.apply(beta.normal, targets[0]), reduce=self.apply(beta.reduce, targets[1]))


class GCNPolicy(BasePolicy):
    """Two graph-convolution layers over the cell and a linear head per intermediate node.

    Node features: input nodes have learned embeddings; an intermediate node has the concatenated
    embeddings of its two incoming ops, projected to the feature size. `adjacency="normalized"`
    (default) uses D^-1/2 (A+I) D^-1/2; `"raw"` is the authors' variant (A, no self-loops)."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat", embedding_size: int = 64,
                 hidden_size: int = 64, adjacency: str = "normalized"):
        super().__init__(primitives, rule)
        if adjacency not in ("normalized", "raw"):
            raise ValueError(f"adjacency must be 'normalized' or 'raw', got {adjacency!r}")
        self.adjacency = adjacency
        p = len(self.primitives)
        self.op_embedding = nn.Embedding(p, embedding_size)
        self.input_embedding = nn.Parameter(torch.randn(2, hidden_size) * 0.1)
        self.project = nn.Linear(2 * embedding_size, hidden_size)
        self.w1 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b1 = nn.Parameter(torch.zeros(hidden_size))
        self.w2 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b2 = nn.Parameter(torch.zeros(hidden_size))
        self.head = nn.Linear(hidden_size, 2 * p)
        for w in (self.w1, self.w2):
            nn.init.xavier_uniform_(w)

    def node_features(self, ops: torch.Tensor) -> torch.Tensor:
        b, e = ops.shape
        emb = self.op_embedding(ops).view(b, e // 2, -1)           # two edges per node, in order
        inter = self.project(emb)                                   # (B, nodes, H)
        inputs = self.input_embedding.unsqueeze(0).expand(b, -1, -1)
        return torch.cat([inputs, inter], dim=1)

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if self.adjacency == "normalized":
            adj = normalize_adjacency(adj)
        x = self.node_features(ops)
        logits = gcn_policy_logits(adj, x, self.w1, self.b1, self.w2, self.b2, self.head.weight.t(), self.head.bias)
        b, n, _ = logits.shape
        return logits[:, 2:].reshape(b, (n - 2) * 2, len(self.primitives))


class LSTMPolicy(BasePolicy):
    """Ablation baseline: an LSTM reads the edges in order (op and source node) and gives each
    edge's logits."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat", embedding_size: int = 64,
                 hidden_size: int = 64, max_nodes: int = 8):
        super().__init__(primitives, rule)
        self.op_embedding = nn.Embedding(len(self.primitives), embedding_size)
        self.from_embedding = nn.Embedding(max_nodes, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, len(self.primitives))

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.op_embedding(ops) + self.from_embedding(frm))
        return self.head(out)


class RandomPolicy(BasePolicy):
    """Ablation baseline: uniform over the allowed transitions of every edge (nothing to learn)."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat"):
        super().__init__(primitives, rule)
        self.register_parameter("unused", None)

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ops.shape, len(self.primitives), device=self.mask.device)


POLICIES = {"gcn": GCNPolicy, "lstm": LSTMPolicy, "random": RandomPolicy}


def make_policy(kind: str, primitives: Sequence[str], rule: str = "nat", **kwargs) -> BasePolicy:
    if kind not in POLICIES:
        raise ValueError(f"unknown policy {kind!r}; choose from {', '.join(POLICIES)}")
    if kind == "random":
        return RandomPolicy(primitives, rule)
    if kind == "lstm":
        kwargs.pop("adjacency", None)
    return POLICIES[kind](primitives, rule, **kwargs)
