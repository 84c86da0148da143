// Plane geometry and the run-time choice of the plane kernels' instruction set.
#include <torch/library.h>

#include "cpu/cpu_features.h"
#include "cpu/plane_kernels.h"

namespace natfast {
namespace cpu {

PlaneGeometry plane_geometry(int64_t H, int64_t W, int64_t k, int64_t stride, int64_t dilation) {
  PlaneGeometry g;
  g.H = H;
  g.W = W;
  g.k = k;
  g.stride = stride;
  g.dilation = dilation;
  g.pad = dilation * (k - 1) / 2;
  g.Ho = (H - 1) / stride + 1;
  g.Wo = (W - 1) / stride + 1;
  g.Wo_pad = (g.Wo + kMaxVector - 1) / kMaxVector * kMaxVector;
  g.Hp = H + 2 * g.pad;
  const int64_t span = dilation * (k - 1);
  // A phase row must hold the padded input's columns of that phase, whole vectors of outputs plus
  // the window's reach (forward and weight gradient), and the padded output gradient (gather).
  int64_t rs = (W + 2 * g.pad + stride - 1) / stride;
  rs = rs > g.Wo_pad + span / stride ? rs : g.Wo_pad + span / stride;
  rs = rs > g.pad + g.Wo_pad ? rs : g.pad + g.Wo_pad;
  g.rs = (rs + kMaxVector - 1) / kMaxVector * kMaxVector;
  g.phase = g.Hp * g.rs;
  g.scratch = stride * g.phase;
  return g;
}

template <>
const PlaneKernels<float>& plane_kernels<float>() {
  switch (capability_level()) {
    case Capability::kAvx2: return avx2::kernels_float();
    case Capability::kVec128: return vec128::kernels_float();
    default: return portable::kernels_float();
  }
}

template <>
const PlaneKernels<double>& plane_kernels<double>() {
  return portable::kernels_double();
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // "avx2", "vec128" or "portable": the instruction set the CPU kernels run with (as natfast._C.cpu_capability(),
  // but reachable from a development build loaded with torch.ops.load_library too).
  m.def("cpu_capability() -> str", &natfast::cpu::capability);
}
