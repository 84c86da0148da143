// The plane kernels compiled for AVX2 + FMA (8 floats a vector). Only this file is compiled with
// those instructions enabled (by the pragma below, not by a global -mavx2), so the library still
// loads and runs its portable kernels on CPUs without them; plane_dispatch.cpp picks at run time.
#include "cpu/plane_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define NATFAST_SIMD_AVX2
#include "cpu/plane_kernels_impl.h"

namespace natfast {
namespace cpu {
namespace avx2 {

const PlaneKernels<float>& kernels_float() {
  static const PlaneKernels<float> table = make_table<VecAvx2f>();
  return table;
}

}  // namespace avx2
}  // namespace cpu
}  // namespace natfast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // no AVX2 on this architecture: never picked (see cpu_features.h); the portable kernels stand in.

namespace natfast {
namespace cpu {
namespace avx2 {

const PlaneKernels<float>& kernels_float() { return portable::kernels_float(); }

}  // namespace avx2
}  // namespace cpu
}  // namespace natfast

#endif
