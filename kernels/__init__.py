"""Triton kernels for natfast (installed as `natfast.kernels`).

Each module holds the `@triton.jit` kernels of one operation family and thin launchers that take
plain tensors and sizes; autograd and dispatch live in `natfast/ops/backends/triton.py`.

  reduce    deterministic sum of per-program partial rows (second stage of the GCN's weight gradients)
  gcn       batched two-layer GCN + linear head of the policy: forward and backward
  sample    masked softmax over allowed transitions, sampling/argmax, log-prob and entropy
  optim     masked SGD over flat parameters: updates exactly the parameters a step used
  graph_forward, graph_backward   the graph engine's cell (natfast/graph/): every op of a sampled
            cell, forward and backward, reading the architecture from a device table

Importing this package imports Triton: set TRITON_INTERPRET=1 *before* importing it to run the
kernels on CPU tensors in Triton's interpreter (tests).
"""

from . import gcn, optim, reduce, sample  # noqa: E402,F401
