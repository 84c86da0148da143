"""Build natfast and its one compiled extension, natfast._C.

The CPU part (csrc/bindings.cpp, csrc/cpu/*.cpp, csrc/executor/*.cpp) always builds (not on Windows,
see below). The CUDA part (csrc/cuda/*.cu) builds when a CUDA toolkit and a CUDA build of torch are
present.

Environment switches (as in flash-attention / PyTorch):
  NATFAST_FORCE_CUDA=1     build the CUDA part even where no GPU is visible (CI, build machines)
  NATFAST_SKIP_CUDA=1      never build the CUDA part
  NATFAST_SKIP_EXTENSION=1 build no extension at all (pure reference path; the default on Windows,
                           where NATFAST_FORCE_EXTENSION=1 tries a build)
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default "8.0;9.0")
  CUDA_HOME                the CUDA toolkit (default: the one behind `nvcc` on PATH)
  MAX_JOBS                 parallel compile jobs (ninja)
  CXX                      the C++ compiler (default c++, as torch's ninja build)
  OMP_PREFIX               where libomp is (macOS with Apple clang; default: Homebrew's)
  NATFAST_DEBUG_INFO=1     keep the C++ debug symbols (Python's build flags ask for them: about
                           30 MB of the extension's 33, so they are dropped by default)

OpenMP: torch's at::parallel_for, which the CPU kernels use, runs on OpenMP threads only in code
compiled with OpenMP, so the build tests which flags this compiler takes (Apple clang has no
-fopenmp). Where none works the kernels are built single-threaded, with a warning saying how to fix it.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

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


_OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def _compiles(compiler: str, compile_flags, link_flags) -> bool:
    """Whether `compiler` compiles and links a small OpenMP program with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as fh:
            fh.write(_OPENMP_PROBE)
        cmd = [*shlex.split(compiler), *compile_flags, src, "-o", os.path.join(tmp, "probe"), *link_flags]
        try:
            return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except OSError:
            return False


def _libomp_prefixes():
    """Where a macOS libomp may be: OMP_PREFIX, then Homebrew's (Apple silicon, then Intel)."""
    prefixes = [os.environ.get("OMP_PREFIX", "")]
    try:
        prefixes.append(subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    prefixes += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
    return [p for p in prefixes if p and os.path.exists(os.path.join(p, "include", "omp.h"))]


def _openmp_flags(torch):
    """(compile flags, link flags) giving the CPU kernels torch's OpenMP threads; ([], []) where torch
    does not thread with OpenMP (at::parallel_for then needs nothing) or no flags work (a warning)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    compiler = os.environ.get("CXX", "c++")
    candidates = []
    if sys.platform == "darwin":
        # Apple clang (and LLVM's): the preprocessor flag, an omp.h, and torch's own libomp where it
        # ships one (a second copy of the runtime in the process aborts at start-up: "OMP: Error #15").
        torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        for prefix in _libomp_prefixes():
            lib = torch_lib if os.path.exists(os.path.join(torch_lib, "libomp.dylib")) else os.path.join(prefix, "lib")
            candidates.append((["-Xpreprocessor", "-fopenmp", "-I" + os.path.join(prefix, "include")],
                               ["-L" + lib, "-lomp", "-Wl,-rpath," + lib]))
    candidates.append((["-fopenmp"], ["-fopenmp"]))
    for compile_flags, link_flags in candidates:
        if _compiles(compiler, compile_flags, link_flags):
            return compile_flags, link_flags
    hint = " (on macOS: `brew install libomp`, or set OMP_PREFIX)" if sys.platform == "darwin" else ""
    print(f"natfast: WARNING: {compiler} compiles no OpenMP program; building the CPU kernels without "
          f"OpenMP, so they run on one thread{hint}. Rebuild after fixing that for multi-core speed.",
          file=sys.stderr)
    return [], []


def _cxx_flags(omp_compile):
    """The C++ flags, placed after Python's own build flags (which ask for -g: debug symbols are
    about 30 MB of the extension's 33), so a -g0 here drops them unless NATFAST_DEBUG_INFO=1."""
    if sys.platform == "win32":
        return ["/O2"] + omp_compile
    return ["-O3"] + omp_compile + ([] if _flag("NATFAST_DEBUG_INFO") else ["-g0"])


def _extension_modules():
    if _flag("NATFAST_SKIP_EXTENSION"):
        return [], {}
    if sys.platform == "win32" and not _flag("NATFAST_FORCE_EXTENSION"):
        # The kernels use POSIX (dlfcn.h) and GCC/clang extensions, and no Windows build has been tried.
        print("natfast: no compiled extension on Windows (NATFAST_FORCE_EXTENSION=1 tries one); "
              "natfast runs on its plain PyTorch path.", file=sys.stderr)
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
    omp_compile, omp_link = _openmp_flags(torch)
    cxx = _cxx_flags(omp_compile)
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
            extra_link_args=omp_link)
    else:
        ext = cpp_extension.CppExtension(
            "natfast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=omp_link)
    return [ext], {"build_ext": _keeping_objects(cpp_extension.BuildExtension).with_options(use_ninja=True)}


# Where the compiled objects and ninja's build file stay between builds: the folder
# `setup.py build_ext --inplace` uses, so either way of building reuses the other's objects.
KEPT_BUILD_TEMP = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


def _keeping_objects(build_ext):
    """build_ext, its objects kept in KEPT_BUILD_TEMP by editable installs too.

    pip's editable install (PEP 660) builds in a fresh temporary folder each time, so ninja, finding
    no objects, recompiled the whole extension on every `pip install -e .` (minutes) even with no
    source changed. In a kept folder ninja recompiles only the sources whose command, file or
    included headers changed, and the install with nothing changed only relinks."""
    class KeepingObjects(build_ext):
        def finalize_options(self) -> None:
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                self.build_temp = KEPT_BUILD_TEMP
    return KeepingObjects


ext_modules, cmdclass = _extension_modules()

setup(
    name="natfast",
    version="0.1.0",
    description="Fast NAT: Neural Architecture Transformer (NAT and NAT++) on CPU and GPU",
    packages=find_packages(include=["natfast", "natfast.*"]) + ["natfast.kernels"],
    package_dir={"natfast.kernels": "kernels"},
    package_data={"natfast": ["assets/*.npz", "assets/*.md", "assets/policies/*"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={"draw": ["matplotlib"], "imagenet": ["pillow>=9.1"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["natfast=natfast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
