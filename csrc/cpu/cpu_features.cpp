#include "cpu/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace natfast {
namespace cpu {
namespace {

Capability best_available() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
#if defined(__GNUC__) || defined(__clang__)
  return Capability::kVec128;  // kernels_vec128.cpp builds with these compilers only
#else
  return Capability::kPortable;
#endif
}

}  // namespace

Capability capability_level() {
  static const Capability value = [] {
    const Capability best = best_available();
    const char* cap = std::getenv("NATFAST_CPU_CAPABILITY");
    if (cap != nullptr && std::strcmp(cap, "portable") == 0) return Capability::kPortable;
    if (cap != nullptr && std::strcmp(cap, "vec128") == 0 && best > Capability::kVec128) return Capability::kVec128;
    return best;
  }();
  return value;
}

std::string capability() {
  switch (capability_level()) {
    case Capability::kAvx2: return "avx2";
    case Capability::kVec128: return "vec128";
    default: return "portable";
  }
}

}  // namespace cpu
}  // namespace natfast
