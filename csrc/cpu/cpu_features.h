#pragma once
#include <string>

namespace natfast {
namespace cpu {

// The SIMD level picked at run time: "avx2" when the CPU has AVX2 and FMA, else "portable".
// NATFAST_CPU_CAPABILITY=portable forces the portable kernels (for testing both).
std::string capability();
bool use_avx2();

}  // namespace cpu
}  // namespace natfast
