#pragma once
#include <string>

namespace natfast {
namespace cpu {

// The instruction set the plane kernels run with, picked once at run time, best first:
//   kAvx2     x86 CPUs with AVX2 and FMA (8 floats a vector);
//   kVec128   any other CPU a GCC-compatible compiler built for (4 floats: NEON, SSE);
//   kPortable one value at a time (and always for double).
// NATFAST_CPU_CAPABILITY=vec128 or =portable caps the choice (for testing each build); a value
// above what the CPU has, or unknown, changes nothing.
enum class Capability { kPortable, kVec128, kAvx2 };

Capability capability_level();
std::string capability();  // "avx2", "vec128" or "portable"

}  // namespace cpu
}  // namespace natfast
