#include "cpu/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace natfast {
namespace cpu {

bool use_avx2() {
  static const bool value = [] {
    const char* forced = std::getenv("NATFAST_CPU_CAPABILITY");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return false;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return value;
}

std::string capability() { return use_avx2() ? "avx2" : "portable"; }

}  // namespace cpu
}  // namespace natfast
