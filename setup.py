"""Build natfast and its one compiled extension, natfast._C.

The CPU part (csrc/bindings.cpp, csrc/cpu/*.cpp, csrc/executor/*.cpp) always builds. The CUDA part
(csrc/cuda/*.cu) builds when a CUDA toolkit and a CUDA build of torch are present.

Environment switches (as in flash-attention / PyTorch):
  NATFAST_FORCE_CUDA=1     build the CUDA part even where no GPU is visible (CI, build machines)
  NATFAST_SKIP_CUDA=1      never build the CUDA part
  NATFAST_SKIP_EXTENSION=1 build no extension at all (pure reference path)
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default "8.0;9.0")
  CUDA_HOME                the CUDA toolkit (default: the one behind `nvcc` on PATH)
  MAX_JOBS                 parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _cuda_home_from_nvcc() -> str | None:
    """`nvcc` on PATH may be a wrapper script; follow it to the real toolkit folder."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    with open(real, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"#!"):  # a wrapper: find the path it execs
        for token in head.decode(errors="ignore").split():
            if token.endswith("/bin/nvcc") and os.path.exists(token):
                real = token
                break
    return os.path.dirname(os.path.dirname(real))


def _extension_modules():
    if _flag("NATFAST_SKIP_EXTENSION"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/bindings.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/executor/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    want_cuda = not _flag("NATFAST_SKIP_CUDA") and bool(cuda_sources) and torch.version.cuda is not None
    if want_cuda and not _flag("NATFAST_FORCE_CUDA") and not torch.cuda.is_available():
        want_cuda = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++17 on older torch,
    # C++20 on torch 2.14); forcing one breaks the other torch versions.
    cxx = ["-O3", "-fopenmp"] if sys.platform != "win32" else ["/O2"]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if want_cuda:
        if not os.environ.get("CUDA_HOME"):
            home = _cuda_home_from_nvcc()
            if home:
                os.environ["CUDA_HOME"] = home
                cpp_extension.CUDA_HOME = home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # CUDA library headers that ship with torch's nvidia wheels (cuBLAS, cuDNN, ...).
        for site in sys.path:
            cand = os.path.join(site, "nvidia", "cu13", "include")
            if os.path.isdir(cand):
                include_dirs.append(cand)
        define_macros.append(("NATFAST_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "natfast._C", sources + cuda_sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "natfast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_modules()

setup(
    name="natfast",
    version="0.1.0",
    description="Fast NAT: Neural Architecture Transformer (NAT and NAT++) on CPU and GPU",
    packages=find_packages(include=["natfast", "natfast.*"]) + ["natfast.kernels"],
    package_dir={"natfast.kernels": "kernels"},
    package_data={"natfast": ["assets/*.npz", "assets/*.md"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={"draw": ["matplotlib"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["natfast=natfast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
