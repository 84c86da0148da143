// The Python module natfast._C. Operators register themselves with the dispatcher in their own
// files (TORCH_LIBRARY_FRAGMENT(natfast, m) in csrc/cpu, csrc/cuda, csrc/executor), so adding a
// kernel never touches this file; here live only the facts `natfast info` reports.
#include <torch/extension.h>

#include "cpu/cpu_features.h"

namespace {

bool built_with_cuda() {
#ifdef NATFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Whether at::parallel_for spreads the CPU kernels over torch's threads: with torch's OpenMP
// backend that takes an OpenMP build (setup.py says when it could not make one).
bool cpu_kernels_threaded() {
#if defined(_OPENMP) || !AT_PARALLEL_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "natfast compiled kernels (CPU always; CUDA when built with NATFAST_WITH_CUDA)";
  m.def("built_with_cuda", &built_with_cuda, "whether the CUDA kernels were compiled in");
  m.def("cpu_capability", &natfast::cpu::capability, "the SIMD level the CPU kernels use at run time");
  m.def("cpu_kernels_threaded", &cpu_kernels_threaded, "whether the CPU kernels run on torch's threads");
}
