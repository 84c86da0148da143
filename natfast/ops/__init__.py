"""Operations: reference implementations, fast backends and the dispatch between them.

Where to look for an operation `X`: `natfast/ops/X.py` holds its reference (plain PyTorch) and
its public function; `natfast/ops/backends/` registers the fast versions (C++ CPU, Triton, CUDA)
with `dispatch`. `natfast info` lists what is active.
"""
from . import dispatch
from .conv import relu_conv2d
from .depthwise import relu_dwconv
from .gcn import gcn_policy_logits
from .layers import OPERATIONS, make_op
from .optim import masked_sgd
from .norm import group_batch_norm
from .pointwise import conv1x1
from .policy_sample import masked_sample
from .pool import pool2d

__all__ = ["dispatch", "relu_dwconv", "relu_conv2d", "gcn_policy_logits", "conv1x1", "group_batch_norm", "pool2d",
           "masked_sample", "masked_sgd", "make_op", "OPERATIONS"]

from .backends import load_all as _load_backends

_load_backends()
