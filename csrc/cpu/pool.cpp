// natfast::cpu_pool2d_{forward,backward}: k x k max or average pooling, padding k / 2, stride 1 or 2;
// the average excludes the padding (count_include_pad=False). Contiguous NCHW planes.
#include <torch/library.h>

#include <string>

#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

bool is_max(const std::string& kind, const char* op) {
  TORCH_CHECK(kind == "max" || kind == "avg", op, ": kind must be 'max' or 'avg', got '", kind, "'");
  return kind == "max";
}

PlaneGeometry pool_geometry(const at::Tensor& x, int64_t kernel, int64_t stride, const char* op) {
  check_planes(x, op);
  check_window(kernel, stride, 1, op);
  return plane_geometry(x.size(2), x.size(3), kernel, stride, 1);
}

// 1 / (number of window elements inside the plane), per output, in rows of Wo_pad (zero tail).
template <typename T>
std::vector<T> inverse_counts(const PlaneGeometry& g) {
  auto inside = [&](int64_t o, int64_t size) {
    const int64_t lo = std::max<int64_t>(o * g.stride - g.pad, 0);
    const int64_t hi = std::min<int64_t>(o * g.stride - g.pad + g.k, size);
    return hi - lo;
  };
  std::vector<T> inv(g.Ho * g.Wo_pad, T(0));
  for (int64_t oy = 0; oy < g.Ho; ++oy)
    for (int64_t ox = 0; ox < g.Wo; ++ox) inv[oy * g.Wo_pad + ox] = T(1.0 / double(inside(oy, g.H) * inside(ox, g.W)));
  return inv;
}

at::Tensor pool2d_forward(const at::Tensor& x_in, const std::string& kind, int64_t kernel, int64_t stride) {
  const bool max = is_max(kind, "cpu_pool2d_forward");
  const PlaneGeometry g = pool_geometry(x_in, kernel, stride, "cpu_pool2d_forward");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_pool2d_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t planes = x.size(0) * x.size(1);
    if (max) {
      for_each_plane<scalar_t>(planes, g, -std::numeric_limits<scalar_t>::infinity(), 1,
                               [&](int64_t i, scalar_t* P, scalar_t*, scalar_t*) {
                                 kernels.max_pool_forward(xp + i * g.H * g.W, yp + i * g.Ho * g.Wo, g, P);
                               });
      return;
    }
    const std::vector<scalar_t> inv = inverse_counts<scalar_t>(g);
    for_each_plane<scalar_t>(planes, g, 0, 1, [&](int64_t i, scalar_t* P, scalar_t*, scalar_t*) {
      kernels.avg_pool_forward(xp + i * g.H * g.W, yp + i * g.Ho * g.Wo, inv.data(), g, P);
    });
  });
  return y;
}

at::Tensor pool2d_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in, const std::string& kind,
                           int64_t kernel, int64_t stride) {
  const bool max = is_max(kind, "cpu_pool2d_backward");
  const PlaneGeometry g = pool_geometry(x_in, kernel, stride, "cpu_pool2d_backward");
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef({x_in.size(0), x_in.size(1), g.Ho, g.Wo}),
              "cpu_pool2d_backward: grad_y has shape ", grad_y_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_y = grad_y_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_pool2d_backward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    const int64_t planes = x.size(0) * x.size(1);
    if (max) {
      for_each_plane<scalar_t>(planes, g, -std::numeric_limits<scalar_t>::infinity(), 3,
                               [&](int64_t i, scalar_t* P, scalar_t* G, scalar_t* Q) {
                                 kernels.max_pool_backward(gyp + i * g.Ho * g.Wo, xp + i * g.H * g.W,
                                                           gxp + i * g.H * g.W, g, P, G, Q);
                               });
      return;
    }
    const std::vector<scalar_t> inv = inverse_counts<scalar_t>(g);
    // P is unused by the average's backward; G and Q are what it needs.
    for_each_plane<scalar_t>(planes, g, 0, 3, [&](int64_t i, scalar_t*, scalar_t* G, scalar_t* Q) {
      kernels.avg_pool_backward(gyp + i * g.Ho * g.Wo, gxp + i * g.H * g.W, inv.data(), g, G, Q);
    });
  });
  return grad_x;
}

}  // namespace
}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // kind 'max' or 'avg'; kernel odd <= 7, padding kernel // 2, stride 1 or 2; the average excludes
  // the padding. float32 (AVX2 or portable) and float64 (portable). Output NCHW.
  m.def("cpu_pool2d_forward(Tensor x, str kind, int kernel, int stride) -> Tensor");
  // d loss / d x; for 'max' the gradient goes to the first maximum of each window (as PyTorch).
  m.def("cpu_pool2d_backward(Tensor grad_y, Tensor x, str kind, int kernel, int stride) -> Tensor");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_pool2d_forward", &natfast::cpu::pool2d_forward);
  m.impl("cpu_pool2d_backward", &natfast::cpu::pool2d_backward);
}
