"""Triton kernels for natfast (installed as `natfast.kernels`).

Each module holds the `@triton.jit` kernels of one operation family and thin launchers that take
plain tensors and sizes; autograd and dispatch live in `natfast/ops/backends/triton.py`.

  reduce    deterministic sum of per-program partial rows (second stage of every weight gradient)
  dwconv    fused ReLU + depthwise convolution: forward, input gradient, weight gradient
  pool      3x3/5x5 max/avg pooling (avg excludes padding): forward and backward
  batchnorm BN without affine, batch statistics per group of samples: forward and backward
  gcn       batched two-layer GCN + linear head of the policy: forward and backward
  sample    masked softmax over allowed transitions, sampling/argmax, log-prob and entropy
  optim     masked SGD over flat parameters: updates exactly the parameters a step used
  graph_forward, graph_backward   the graph engine's cell (natfast/graph/): every op of a sampled
            cell, forward and backward, reading the architecture from a device table

Importing this package imports Triton: set TRITON_INTERPRET=1 *before* importing it to run the
kernels on CPU tensors in Triton's interpreter (tests).
"""

from . import batchnorm, dwconv, gcn, optim, pool, reduce, sample  # noqa: E402,F401
