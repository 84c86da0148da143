// The plane kernels for any CPU, one lane at a time (float and double; double serves gradcheck).
#include "cpu/plane_kernels_impl.h"

namespace natfast {
namespace cpu {
namespace portable {

const PlaneKernels<float>& kernels_float() {
  static const PlaneKernels<float> table = make_table<VecScalar<float>>();
  return table;
}

const PlaneKernels<double>& kernels_double() {
  static const PlaneKernels<double> table = make_table<VecScalar<double>>();
  return table;
}

}  // namespace portable
}  // namespace cpu
}  // namespace natfast
