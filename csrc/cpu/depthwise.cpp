// natfast::cpu_relu_dwconv_{forward,backward}: y = conv2d(relu(x), weight, groups=C) with 'same'
// padding dilation * (k - 1) / 2, on contiguous NCHW planes (natfast/ops/backends/cpu.py).
#include <torch/library.h>

#include "cpu/ops.h"
#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

PlaneGeometry dwconv_geometry(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation,
                              const char* op) {
  check_planes(x, op);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3),
              op, ": weight must be (C, 1, k, k) with C = ", x.size(1), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight and input dtypes differ");
  check_window(weight.size(2), stride, dilation, op);
  return plane_geometry(x.size(2), x.size(3), weight.size(2), stride, dilation);
}

}  // namespace

at::Tensor relu_dwconv_forward(const at::Tensor& x_in, const at::Tensor& weight_in, int64_t stride,
                               int64_t dilation) {
  const PlaneGeometry g = dwconv_geometry(x_in, weight_in, stride, dilation, "cpu_relu_dwconv_forward");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t C = x.size(1), kk = g.k * g.k;
  at::Tensor y = at::empty({x.size(0), C, g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_relu_dwconv_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    for_each_plane<scalar_t>(x.size(0) * C, g, 0, 1, [&](int64_t i, scalar_t** buffers) {
      kernels.relu_dwconv_forward(xp + i * g.H * g.W, wp + (i % C) * kk, yp + i * g.Ho * g.Wo, g, buffers[0]);
    });
  });
  return y;
}

// (grad_x, grad_weight). The weight gradient sums per-plane partials over the batch in a fixed
// order, so it does not depend on the number of threads.
std::tuple<at::Tensor, at::Tensor> relu_dwconv_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                         const at::Tensor& weight_in, int64_t stride,
                                                         int64_t dilation) {
  const PlaneGeometry g = dwconv_geometry(x_in, weight_in, stride, dilation, "cpu_relu_dwconv_backward");
  const int64_t N = x_in.size(0), C = x_in.size(1), kk = g.k * g.k;
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef({N, C, g.Ho, g.Wo}),
              "cpu_relu_dwconv_backward: grad_y has shape ", grad_y_in.sizes());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor grad_y = grad_y_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_w = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_relu_dwconv_backward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    std::vector<scalar_t> partial(N * C * kk);
    for_each_plane<scalar_t>(N * C, g, 0, 2, [&](int64_t i, scalar_t** buffers) {
      kernels.relu_dwconv_backward(gyp + i * g.Ho * g.Wo, xp + i * g.H * g.W, wp + (i % C) * kk,
                                   gxp + i * g.H * g.W, partial.data() + i * kk, g, buffers[0], buffers[1]);
    });
    scalar_t* gwp = grad_w.data_ptr<scalar_t>();
    for (int64_t j = 0; j < C * kk; ++j) {
      double total = 0;
      for (int64_t n = 0; n < N; ++n) total += partial[n * C * kk + j];
      gwp[j] = static_cast<scalar_t>(total);
    }
  });
  return {grad_x, grad_w};
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // y = conv2d(relu(x), weight, groups=C), 'same' padding dilation*(k-1)/2; weight (C, 1, k, k),
  // k odd <= 7, stride 1 or 2; float32 (AVX2 or portable) and float64 (portable). Output NCHW.
  m.def("cpu_relu_dwconv_forward(Tensor x, Tensor weight, int stride, int dilation) -> Tensor");
  // (d loss / d x, ReLU mask included; d loss / d weight), deterministic.
  m.def("cpu_relu_dwconv_backward(Tensor grad_y, Tensor x, Tensor weight, int stride, int dilation) -> "
        "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_relu_dwconv_forward", &natfast::cpu::relu_dwconv_forward);
  m.impl("cpu_relu_dwconv_backward", &natfast::cpu::relu_dwconv_backward);
}
