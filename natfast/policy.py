"""The transformation policy pi(alpha | beta): a GCN over the cell graph (and two ablation
baselines, an LSTM policy and random transformations).

For each intermediate node the policy gives, for each of its two incoming edges, logits over its
choices. Two heads: "masked" (natfast's default) has one logit per target op, and the transitions
the rule forbids are masked out of the softmax; "relative" (the NAT authors' NAT policy) has three
logits, {null, same, skip} (TRANSFORM_PRIMITIVES in their code): "same" keeps the op, so on a skip or
a null edge two choices lead to the same op and the entropy is still over three. Normal and
reduction cells are transformed by the same policy, separately (as a batch of graphs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from .genotype import Genotype
from .ops.gcn import gcn_policy_logits
from .ops.policy_sample import masked_sample, smoothed_sample
from .transitions import NULL, SKIP, transition_mask

Edges = Sequence[Tuple[str, int, int]]
HEADS = ("masked", "relative")
# The relative head's choices, in the authors' order (their TRANSFORM_PRIMITIVES).
RELATIVE_CHOICES = ("null", "same", "skip_connect")


@dataclass
class Transformation:
    """Sampled (or argmax) targets for a batch of cells, with what REINFORCE needs."""
    targets: torch.Tensor    # (B, E) target op index per edge
    log_prob: torch.Tensor   # (B,) sum over edges
    entropy: torch.Tensor    # (B,) sum over edges
    choices: torch.Tensor    # (B, E) the head's choice per edge (the targets for the masked head)


def encode_cells(cells: Sequence[Edges], primitives: Sequence[str], device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(op ids (B, E), from ids (B, E), raw adjacency (B, N, N) with A[t, f] = the number of edges
    f -> t: two edges between the same nodes count twice, as the authors' sparse matrix sums them)."""
    index = {p: i for i, p in enumerate(primitives)}
    ops = torch.tensor([[index[op] for op, _, _ in cell] for cell in cells], dtype=torch.long)
    frm = torch.tensor([[f for _, f, _ in cell] for cell in cells], dtype=torch.long)
    to = torch.tensor([[t for _, _, t in cell] for cell in cells], dtype=torch.long)
    n = int(to.max()) + 1
    adj = torch.zeros(len(cells), n, n)
    b_idx = torch.arange(len(cells)).unsqueeze(1).expand_as(frm)
    adj.index_put_((b_idx, to, frm), torch.ones(frm.shape), accumulate=True)
    return ops.to(device), frm.to(device), adj.to(device)


def normalize_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 (Kipf & Welling), row degrees of the directed graph; A is 0/1 here
    (a connection is one neighbour, however many edges it carries)."""
    a = (adj > 0).to(adj.dtype) + torch.eye(adj.shape[-1], device=adj.device)
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class BasePolicy(nn.Module):
    """Shared machinery: the head's choices (masked by the transition rule, or relative), sampling,
    argmax, applying targets. `prob_epsilon` > 0 adds it to the probabilities as the authors do."""

    def __init__(self, primitives: Sequence[str], rule: str, head: str = "masked", prob_epsilon: float = 0.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"policy head must be one of {', '.join(HEADS)}, got {head!r}")
        if head == "relative" and rule != "nat":
            raise ValueError(f"the relative head chooses among {{null, same, skip}}: the NAT rule's "
                             f"transitions, not {rule!r}'s; use the masked head")
        if prob_epsilon < 0:
            raise ValueError(f"prob_epsilon must be >= 0, got {prob_epsilon}")
        self.primitives = tuple(primitives)
        self.rule, self.head_kind, self.prob_epsilon = rule, head, float(prob_epsilon)
        self.register_buffer("mask", transition_mask(self.primitives, rule), persistent=False)
        self.num_choices = len(RELATIVE_CHOICES) if head == "relative" else len(self.primitives)

    def edge_logits(self, cells: Sequence[Edges]) -> torch.Tensor:
        """(B, E, A) unmasked logits of every edge's choices (A: ops, or the relative head's 3)."""
        return self._edge_logits(*encode_cells(cells, self.primitives, self.mask.device))

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logits_and_mask(self, cells: Sequence[Edges]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, E, A), allowed choices (B, E, A), op ids (B, E))."""
        ops, frm, adj = encode_cells(cells, self.primitives, self.mask.device)
        logits = self._edge_logits(ops, frm, adj)
        if self.head_kind == "relative":
            return logits, torch.ones_like(logits, dtype=torch.bool), ops
        return logits, self.mask[ops], ops

    def _targets(self, ops: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        """Target op ids of the head's choices."""
        if self.head_kind == "masked":
            return choices
        null, skip = self.primitives.index(NULL), self.primitives.index(SKIP)
        options = torch.stack([torch.full_like(ops, null), ops, torch.full_like(ops, skip)], dim=-1)
        return options.gather(-1, choices.unsqueeze(-1)).squeeze(-1)

    def _choose(self, logits, allowed, uniform=None):
        if self.prob_epsilon > 0:
            return smoothed_sample(logits, allowed, self.prob_epsilon, uniform)
        return masked_sample(logits, allowed, uniform)

    def masked_logits(self, cells: Sequence[Edges]) -> torch.Tensor:
        logits, allowed, _ = self._logits_and_mask(cells)
        return logits.masked_fill(~allowed, float("-inf"))

    def sample(self, cells: Sequence[Edges], generator: torch.Generator, num_samples: int = 1) -> List[Transformation]:
        """`num_samples` independent transformations of every cell from one policy forward pass.
        The uniforms come from the CPU `generator`, so a run is reproducible on any device."""
        logits, allowed, ops = self._logits_and_mask(cells)
        b, e, a = logits.shape
        logits = logits.unsqueeze(0).expand(num_samples, b, e, a)
        uniform = torch.rand(num_samples, b, e, generator=generator).to(logits.device)
        choices, log_p, entropy = self._choose(logits, allowed.unsqueeze(0).expand_as(logits), uniform)
        return [Transformation(self._targets(ops, choices[i]), log_p[i].sum(-1), entropy[i].sum(-1), choices[i])
                for i in range(num_samples)]

    def evaluate(self, cells: Sequence[Edges], choices: torch.Tensor) -> Transformation:
        """log pi and entropy of given choices (B, E) (a Transformation's `choices`; for the masked
        head these are the target ops): what REINFORCE differentiates."""
        logits, allowed, ops = self._logits_and_mask(cells)
        _, _, entropy = self._choose(logits, allowed)
        if self.prob_epsilon > 0:
            log_p = torch.log(torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) + self.prob_epsilon)
        else:
            log_p = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        chosen = log_p.gather(-1, choices.unsqueeze(-1)).squeeze(-1)
        return Transformation(self._targets(ops, choices), chosen.sum(-1), entropy.sum(-1), choices)

    def argmax(self, cells: Sequence[Edges]) -> Transformation:
        logits, allowed, ops = self._logits_and_mask(cells)
        choices, log_p, entropy = self._choose(logits, allowed)
        return Transformation(self._targets(ops, choices), log_p.sum(-1), entropy.sum(-1), choices)

    def apply(self, cell: Edges, targets: torch.Tensor) -> List[Tuple[str, int, int]]:
        return [(self.primitives[int(k)], f, t) for (_, f, t), k in zip(cell, targets.tolist())]

    def transform(self, beta: Genotype, generator: torch.Generator) -> Tuple[Genotype, torch.Tensor, torch.Tensor]:
        """Sample alpha ~ pi(.|beta); returns (alpha, log pi(alpha), entropy), normal+reduce summed."""
        tr = self.sample([beta.normal, beta.reduce], generator)[0]
        return self.to_genotype(beta, tr.targets), tr.log_prob.sum(), tr.entropy.sum()

    def to_genotype(self, beta: Genotype, targets: torch.Tensor) -> Genotype:
        return beta._replace(normal=self.apply(beta.normal, targets[0]), reduce=self.apply(beta.reduce, targets[1]))


INITS = ("xavier", "pygcn")


class GCNPolicy(BasePolicy):
    """Two graph-convolution layers over the cell and a linear head per intermediate node.

    Node features: an intermediate node has the concatenated embeddings of its two incoming ops
    (2 x embedding_size), projected by a linear layer. With `feature_size` 0 (natfast's layout)
    they are projected to hidden_size and the input nodes have learned embeddings of hidden_size;
    with `feature_size` F > 0 (the authors' layout, F = 1024) the input nodes' embeddings have
    2 x embedding_size too, every node is projected to F, and the GCN maps F -> H -> H.
    `adjacency="normalized"` (default) uses D^-1/2 (A+I) D^-1/2; `"raw"` is the authors' variant
    (A counting edges, no self-loops). `init="xavier"`: Xavier-uniform GCN weights, zero biases,
    input embeddings N(0, 0.01); `"pygcn"` (the authors'): pygcn's U(+-1/sqrt(out)) GCN weights and
    biases, input embeddings N(0, 1) as torch's nn.Embedding."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat", embedding_size: int = 64,
                 hidden_size: int = 64, adjacency: str = "normalized", head: str = "masked",
                 prob_epsilon: float = 0.0, feature_size: int = 0, init: str = "xavier"):
        super().__init__(primitives, rule, head, prob_epsilon)
        if adjacency not in ("normalized", "raw"):
            raise ValueError(f"adjacency must be 'normalized' or 'raw', got {adjacency!r}")
        if init not in INITS:
            raise ValueError(f"policy init must be one of {', '.join(INITS)}, got {init!r}")
        if feature_size < 0:
            raise ValueError(f"feature_size must be >= 0, got {feature_size}")
        self.adjacency, self.feature_size = adjacency, feature_size
        gcn_in = feature_size or hidden_size
        self.op_embedding = nn.Embedding(len(self.primitives), embedding_size)
        input_size = 2 * embedding_size if feature_size else hidden_size
        self.input_embedding = nn.Parameter(torch.randn(2, input_size) * (1.0 if init == "pygcn" else 0.1))
        self.project = nn.Linear(2 * embedding_size, gcn_in)
        self.w1 = nn.Parameter(torch.empty(gcn_in, hidden_size))
        self.b1 = nn.Parameter(torch.zeros(hidden_size))
        self.w2 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b2 = nn.Parameter(torch.zeros(hidden_size))
        self.head = nn.Linear(hidden_size, 2 * self.num_choices)
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            if init == "pygcn":
                bound = 1.0 / math.sqrt(w.shape[1])
                nn.init.uniform_(w, -bound, bound)
                nn.init.uniform_(b, -bound, bound)
            else:
                nn.init.xavier_uniform_(w)

    def node_features(self, ops: torch.Tensor) -> torch.Tensor:
        b, e = ops.shape
        emb = self.op_embedding(ops).view(b, e // 2, -1)           # two edges per node, in order
        inputs = self.input_embedding.unsqueeze(0).expand(b, -1, -1)
        if self.feature_size:
            return self.project(torch.cat([inputs, emb], dim=1))   # (B, nodes, F)
        return torch.cat([inputs, self.project(emb)], dim=1)       # (B, nodes, H)

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if self.adjacency == "normalized":
            adj = normalize_adjacency(adj)
        x = self.node_features(ops)
        adj = adj.to(x.dtype)
        logits = gcn_policy_logits(adj, x, self.w1, self.b1, self.w2, self.b2, self.head.weight.t(), self.head.bias)
        b, n, _ = logits.shape
        return logits[:, 2:].reshape(b, (n - 2) * 2, self.num_choices)


class LSTMPolicy(BasePolicy):
    """Ablation baseline: an LSTM reads the edges in order (op and source node) and gives each
    edge's logits."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat", embedding_size: int = 64,
                 hidden_size: int = 64, max_nodes: int = 8, head: str = "masked", prob_epsilon: float = 0.0):
        super().__init__(primitives, rule, head, prob_epsilon)
        self.op_embedding = nn.Embedding(len(self.primitives), embedding_size)
        self.from_embedding = nn.Embedding(max_nodes, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, self.num_choices)

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.op_embedding(ops) + self.from_embedding(frm))
        return self.head(out)


class RandomPolicy(BasePolicy):
    """Ablation baseline: uniform over the head's allowed choices of every edge (nothing to learn)."""

    def __init__(self, primitives: Sequence[str], rule: str = "nat", head: str = "masked", prob_epsilon: float = 0.0):
        super().__init__(primitives, rule, head, prob_epsilon)
        self.register_parameter("unused", None)

    def _edge_logits(self, ops: torch.Tensor, frm: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ops.shape, self.num_choices, device=self.mask.device)


POLICIES = {"gcn": GCNPolicy, "lstm": LSTMPolicy, "random": RandomPolicy}
_GCN_ONLY = ("adjacency", "feature_size", "init")


def make_policy(kind: str, primitives: Sequence[str], rule: str = "nat", **kwargs) -> BasePolicy:
    if kind not in POLICIES:
        raise ValueError(f"unknown policy {kind!r}; choose from {', '.join(POLICIES)}")
    if kind != "gcn":
        kwargs = {k: v for k, v in kwargs.items() if k not in _GCN_ONLY}
    if kind == "random":
        kwargs = {k: v for k, v in kwargs.items() if k in ("head", "prob_epsilon")}
    return POLICIES[kind](primitives, rule, **kwargs)
