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

# NATFAST_RECORD_TRITON_LAUNCHES=path: record the interpreted Triton launches of this run, for
# tests/triton_compile_check.py to compile for real GPUs (see tests/test_triton_compile.py).
_dump_triton_launches = None


def pytest_configure(config):
    global _dump_triton_launches
    if os.environ.get("NATFAST_RECORD_TRITON_LAUNCHES") and os.environ.get("TRITON_INTERPRET") == "1":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from triton_compile_check import install_recorder
        _dump_triton_launches = install_recorder()


def pytest_unconfigure(config):
    if _dump_triton_launches is not None:
        _dump_triton_launches(os.environ["NATFAST_RECORD_TRITON_LAUNCHES"])
