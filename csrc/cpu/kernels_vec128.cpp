// The plane kernels in 128-bit vectors (4 floats) for CPUs without AVX2: NEON on ARM (Apple
// silicon, Graviton), SSE on older x86. Written in the compiler's generic vectors (simd.h, Vec128f),
// which need no target flag on either (NEON and SSE2 are their baselines). MSVC has no such
// vectors: there the portable kernels stand in.
#include "cpu/plane_kernels.h"

#if defined(__GNUC__) || defined(__clang__)

#define NATFAST_SIMD_VEC128
#include "cpu/plane_kernels_impl.h"

namespace natfast {
namespace cpu {
namespace vec128 {

const PlaneKernels<float>& kernels_float() {
  static const PlaneKernels<float> table = make_table<Vec128f>();
  return table;
}

}  // namespace vec128
}  // namespace cpu
}  // namespace natfast

#else

namespace natfast {
namespace cpu {
namespace vec128 {

const PlaneKernels<float>& kernels_float() { return portable::kernels_float(); }

}  // namespace vec128
}  // namespace cpu
}  // namespace natfast

#endif
