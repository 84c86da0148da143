import os
import sys
from pathlib import Path

# Triton kernels run on the CPU through Triton's interpreter when there is no GPU (correctness only).
try:
    import torch
    _gpu = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _gpu = False
if not _gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NATFAST_TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10"
