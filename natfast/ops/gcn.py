"""Batched GCN message passing for the policy: B cell graphs of N nodes at once.

    H1 = relu(A @ (X @ W1) + b1)
    H2 = A @ (H1 @ W2) + b2
    logits = H2 @ Wh + bh

A: (B, N, N) adjacency (normalised with self-loops, or the authors' raw A), X: (B, N, F).
Weights are stored (in, out), so `X @ W` needs no transpose.
"""
from __future__ import annotations

import torch

from . import dispatch


def gcn_policy_logits_reference(adj, x, w1, b1, w2, b2, wh, bh) -> torch.Tensor:
    h = torch.relu(torch.matmul(adj, torch.matmul(x, w1)) + b1)
    h = torch.matmul(adj, torch.matmul(h, w2)) + b2
    return torch.matmul(h, wh) + bh


dispatch.register("gcn_policy_logits", "reference", gcn_policy_logits_reference)


def gcn_policy_logits(adj, x, w1, b1, w2, b2, wh, bh) -> torch.Tensor:
    """Two graph convolutions (ReLU between) and the linear head, for a batch of graphs."""
    return dispatch.call("gcn_policy_logits", adj, x, w1, b1, w2, b2, wh, bh)
