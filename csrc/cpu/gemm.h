#pragma once
// The per-sample GEMM of the fused 1x1-convolution kernels (pointwise_bn.cpp,
// dwconv_pointwise_bn.cpp): natfast's PlaneKernels matmul or torch's own BLAS, whichever is faster.
// (Not for kernels_*.cpp: see plane_ops.h.)
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <ATen/Config.h>

#include "cpu/plane_kernels.h"

namespace natfast {
namespace cpu {

// The Fortran BLAS that torch's CPU library carries (MKL or OpenBLAS export sgemm_/dgemm_), looked
// up at run time, so a torch without it still works (on the PlaneKernels matmul).
// Which one runs (NATFAST_CPU_BLAS, read on every call so that a test can switch it):
//   unset: natfast's AVX2 kernel for C = A . B and the BLAS for B given transposed (the weight
//          gradient, whose inner dimension is a whole plane of pixels). Measured inside the fused
//          ops, one sample a call at the supernet's shapes (C 20-144, 8x8-32x32, batch 64, one
//          thread, bench/RESULTS.md): the AVX2 kernel 0.95-1.17x MKL's speed, most often ~1.05x;
//          on weight gradients 0.7x (a 20-channel row of columns leaves a scalar tail over 1024).
//          Without AVX2 (the 128-bit or scalar kernels, measured on no CPU against its BLAS) the
//          BLAS everywhere.
//          In a build without OpenMP threads (cpu_kernels_threaded() false) natfast's kernel
//          everywhere: there the BLAS, called from one thread, threads itself, and its sums then
//          depend on the thread count (inside natfast's parallel region it runs on one thread).
//   1: the BLAS wherever it is found;  0: natfast's kernel everywhere (tests cover all of them).
// Integer arguments are passed as pointers to 64-bit values: on a little-endian CPU an LP64 BLAS
// (32-bit integers, torch's usual MKL) reads their low half and an ILP64 one the whole value, the
// same number either way.
template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const T*,
                             const T*, const int64_t*, const T*, const int64_t*, const T*, T*, const int64_t*);
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "BLAS integer passing assumes a little-endian CPU");

template <typename T>
inline FortranGemm<T> find_blas() {
  const char* name = std::is_same<T, float>::value ? "sgemm_" : "dgemm_";
#ifdef __APPLE__
  void* torch_cpu = dlopen("libtorch_cpu.dylib", RTLD_LAZY | RTLD_NOLOAD);
#else
  void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
#endif
  void* fn = torch_cpu != nullptr ? dlsym(torch_cpu, name) : nullptr;
  if (fn == nullptr) fn = dlsym(RTLD_DEFAULT, name);
  return reinterpret_cast<FortranGemm<T>>(fn);
}

// The BLAS gemm for this call, or nullptr for natfast's kernel (see above).
template <typename T>
inline FortranGemm<T> blas_for(const PlaneKernels<T>& kernels, bool b_transposed) {
  static const FortranGemm<T> found = find_blas<T>();
  const char* setting = std::getenv("NATFAST_CPU_BLAS");
  if (setting != nullptr && std::strcmp(setting, "0") == 0) return nullptr;
  if (setting != nullptr && std::strcmp(setting, "1") == 0) return found;
#if defined(_OPENMP) || !AT_PARALLEL_OPENMP
  return kernels.vector_width >= 8 && !b_transposed ? nullptr : found;
#else
  return nullptr;
#endif
}

// C (M x P) = A (M x K) . B (or C += that, with accumulate), row-major; B is K x P, or P x K when
// b_transposed. (ReLU and masks are the caller's: BLAS has neither.)
template <typename T>
inline void gemm(const PlaneKernels<T>& kernels, const T* A, int64_t lda, const T* B, int64_t ldb, bool b_transposed,
          bool accumulate, T* C, int64_t ldc, int64_t M, int64_t K, int64_t P, T* panel) {
  if (const FortranGemm<T> f = blas_for(kernels, b_transposed)) {
    // Column-major view: C^T (P x M) = op(B)^T (P x K) . A^T (K x M).
    const int64_t m = P, n = M, k = K, ib = ldb, ia = lda, ic = ldc;
    const T one = 1, beta = accumulate ? 1 : 0;
    f(b_transposed ? "T" : "N", "N", &m, &n, &k, &one, B, &ib, A, &ia, &beta, C, &ic);
    return;
  }
  kernels.matmul(A, lda, B, ldb, b_transposed, accumulate, C, ldc, M, K, P, panel);
}

}  // namespace cpu
}  // namespace natfast
