"""Every Triton launch that the interpreted tests make must also compile for sm_80 and sm_90.

The interpreter runs kernels as Python and misses compiler errors; the first GPU run found one that
way (a loop-carried `_` whose type changed). See tests/triton_compile_check.py.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The graph engine's whole-step and scoring tests launch its kernels with the interpreter's big
# tiles, which no GPU runs (natfast/graph/buffers.py: big_tiles); its cell tests (lanes included) launch every kernel with the GPU's
# tiling, and those launches are compiled here. Skipping the step tests saves minutes twice in CI.
# Its cells' extra seeds launch the same configurations as the first seeds.
GPU_CONFIGURATIONS_ELSEWHERE = ("--ignore", str(ROOT / "tests" / "test_graph_engine.py"),
                                "--ignore", str(ROOT / "tests" / "test_graph_capture.py"),
                                "--ignore", str(ROOT / "tests" / "test_graph_scoring.py"),
                                "-k", "not test_more_cells_match")

pytestmark = [
    pytest.mark.triton, pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the triton tests compile the kernels for real"),
]


def test_interpreted_launches_compile_for_gpus(tmp_path):
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton has no ahead-of-time compile API ({exc})")
    launches = tmp_path / "launches.json"
    record_env = dict(os.environ, TRITON_INTERPRET="1", NATFAST_TRITON_INTERPRET="1",
                      NATFAST_RECORD_TRITON_LAUNCHES=str(launches))
    recorded = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "triton", "-p", "no:cacheprovider",
         "--ignore", str(Path(__file__)), *GPU_CONFIGURATIONS_ELSEWHERE, "tests"],
        cwd=ROOT, env=record_env, capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stdout[-3000:] + recorded.stderr[-3000:]
    assert launches.exists(), "the conftest recorder wrote no launches"

    recorded_kernels = {f"{l['module']}.{l['kernel']}" for l in json.loads(launches.read_text())}
    # Every kernel entry point (a jitted `*_kernel`) must have been launched by some interpreted test,
    # or it is compiled by nothing here and its correctness is unchecked.
    unlaunched = sorted(set(_kernel_entry_points()) - recorded_kernels)
    assert recorded_kernels and not unlaunched, f"launched {sorted(recorded_kernels)}; never launched: {unlaunched}"

    compile_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NATFAST_TRITON_INTERPRET")}
    compiled = subprocess.run([sys.executable, "tests/triton_compile_check.py", str(launches)],
                              cwd=ROOT, env=compile_env, capture_output=True, text=True)
    report = compiled.stdout + compiled.stderr[-3000:]
    assert compiled.returncode == 0, report
    found = re.search(r"(\d+) distinct launches of (\d+) kernels, compiled for .*: (\d+) failed", report)
    assert found, report
    launches_count, kernels_count, failed = map(int, found.groups())
    print(f"compiled {launches_count} distinct launches of {kernels_count} kernels for sm_80 and sm_90")
    assert launches_count >= kernels_count == len(recorded_kernels) and failed == 0, report


def _kernel_entry_points():
    """module.name of every jitted function in natfast.kernels named *_kernel (the launched ones; the
    others are device functions they call)."""
    import importlib
    import pkgutil

    from triton.runtime.jit import KernelInterface  # JIT and interpreted kernels alike

    from natfast.ops.backends.triton import load_kernels

    package = load_kernels()
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, KernelInterface):
                names.append(f"{module.__name__}.{name}")
    return names
