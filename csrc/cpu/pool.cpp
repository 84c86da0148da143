// natfast::cpu_pool2d_{forward,backward}: k x k max or average pooling, padding k / 2, stride 1 or 2;
// the average excludes the padding (count_include_pad=False). Contiguous NCHW planes.
// natfast::cpu_pool2d_bn_{forward,backward}: the same followed by the supernet's per-group BN
// (natfast/ops/fused.py), fused: the forward takes each pooled plane's statistics while it is in
// cache; the backward turns each plane's output gradient into the pooling's (the BN backward) in
// scratch and feeds it straight to the pooling backward, so that gradient never goes to memory.
#include <torch/library.h>

#include <string>

#include "cpu/ops.h"
#include "cpu/group_norm.h"
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

// Runs the pooling of one plane: the max or average kernel, with the buffers each expects.
template <typename T>
struct PlanePool {
  const PlaneKernels<T>& kernels;
  const PlaneGeometry& g;
  bool max;
  std::vector<T> inv = {};  // the average's inverse counts

  PlanePool(const PlaneKernels<T>& k, const PlaneGeometry& geometry, bool is_max)
      : kernels(k), g(geometry), max(is_max), inv(is_max ? std::vector<T>() : inverse_counts<T>(geometry)) {}
  T p_fill() const { return max ? -std::numeric_limits<T>::infinity() : T(0); }
  // Buffers for the backward: max: P, G, A; avg: G; plus one spare (the last) for pool2d_bn.
  int backward_buffers() const { return max ? 4 : 2; }
  void forward(const T* x, T* y, T** buffers) const {
    if (max) {
      kernels.max_pool_forward(x, y, g, buffers[0]);
    } else {
      kernels.avg_pool_forward(x, y, inv.data(), g, buffers[0]);
    }
  }
  void backward(const T* gy, const T* x, T* gx, T** buffers) const {
    if (max) {
      kernels.max_pool_backward(gy, x, gx, g, buffers[0], buffers[1], buffers[2]);
    } else {
      kernels.avg_pool_backward(gy, gx, inv.data(), g, buffers[0]);
    }
  }
};

}  // namespace

at::Tensor pool2d_forward(const at::Tensor& x_in, const std::string& kind, int64_t kernel, int64_t stride) {
  const bool max = is_max(kind, "cpu_pool2d_forward");
  const PlaneGeometry g = pool_geometry(x_in, kernel, stride, "cpu_pool2d_forward");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_pool2d_forward", [&] {
    const PlanePool<scalar_t> pool(plane_kernels<scalar_t>(), g, max);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    for_each_plane<scalar_t>(x.size(0) * x.size(1), g, pool.p_fill(), 1, [&](int64_t i, scalar_t** buffers) {
      pool.forward(xp + i * g.H * g.W, yp + i * g.Ho * g.Wo, buffers);
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
    const PlanePool<scalar_t> pool(plane_kernels<scalar_t>(), g, max);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    for_each_plane<scalar_t>(x.size(0) * x.size(1), g, pool.p_fill(), pool.backward_buffers(),
                             [&](int64_t i, scalar_t** buffers) {
                               pool.backward(gyp + i * g.Ho * g.Wo, xp + i * g.H * g.W, gxp + i * g.H * g.W, buffers);
                             });
  });
  return grad_x;
}

// (y, pooled, mean, rstd): y = group BN of pooled = pool(x).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pool2d_bn_forward(const at::Tensor& x_in,
                                                                             const std::string& kind, int64_t kernel,
                                                                             int64_t stride, at::IntArrayRef groups,
                                                                             double eps) {
  const char* op = "cpu_pool2d_bn_forward";
  const bool max = is_max(kind, op);
  const PlaneGeometry g = pool_geometry(x_in, kernel, stride, op);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), out = g.Ho * g.Wo;
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  at::Tensor pooled = at::empty({N, C, g.Ho, g.Wo}, x.options());
  at::Tensor y = at::empty_like(pooled);
  at::Tensor mean = at::empty({G, C}, x.options().dtype(at::kDouble));
  at::Tensor rstd = at::empty({G, C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_pool2d_bn_forward", [&] {
    const PlanePool<scalar_t> pool(plane_kernels<scalar_t>(), g, max);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* pp = pooled.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<double> s1(N * C), s2(N * C);
    for_each_plane<scalar_t>(N * C, g, pool.p_fill(), 1, [&](int64_t i, scalar_t** buffers) {
      pool.forward(xp + i * g.H * g.W, pp + i * out, buffers);
      pool.kernels.sums(pp + i * out, nullptr, out, &s1[i], &s2[i]);
    });
    normalize_planes(pool.kernels, pp, yp, s1, s2, starts, C, out, eps, mean.data_ptr<double>(),
                     rstd.data_ptr<double>());
  });
  return {y, pooled, mean, rstd};
}

at::Tensor pool2d_bn_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& pooled_in,
                              const at::Tensor& mean, const at::Tensor& rstd, const std::string& kind, int64_t kernel,
                              int64_t stride, at::IntArrayRef groups) {
  const char* op = "cpu_pool2d_bn_backward";
  const bool max = is_max(kind, op);
  const PlaneGeometry g = pool_geometry(x_in, kernel, stride, op);
  const int64_t N = x_in.size(0), C = x_in.size(1), out = g.Ho * g.Wo;
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef({N, C, g.Ho, g.Wo}) && pooled_in.sizes() == grad_y_in.sizes(),
              op, ": grad_y and pooled must be (N, C, Ho, Wo)");
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  TORCH_CHECK(mean.sizes() == at::IntArrayRef({G, C}) && rstd.sizes() == mean.sizes() &&
                  mean.scalar_type() == at::kDouble && rstd.scalar_type() == at::kDouble,
              op, ": mean and rstd must be float64 (groups, C) as the forward returns them");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor pooled = pooled_in.to(x.scalar_type()).contiguous();
  const at::Tensor grad_y = grad_y_in.to(x.scalar_type()).contiguous();
  const at::Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_pool2d_bn_backward", [&] {
    const PlanePool<scalar_t> pool(plane_kernels<scalar_t>(), g, max);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = pooled.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    std::vector<double> sg(N * C), sgp(N * C);
    for_each_plane_of(N * C, out, [&](int64_t i) {
      pool.kernels.sums(gyp + i * out, pp + i * out, out, &sg[i], &sgp[i]);
    });
    std::vector<double> a, b, c;
    backward_coefficients(sg, sgp, starts, C, out, mean_c.data_ptr<double>(), rstd_c.data_ptr<double>(), a, b, c);
    const std::vector<int64_t> rows = stat_rows(starts, C);
    const int spare = pool.backward_buffers() - 1;
    for_each_plane<scalar_t>(N * C, g, pool.p_fill(), pool.backward_buffers(), [&](int64_t i, scalar_t** buffers) {
      const int64_t j = rows[i];
      scalar_t* grad_pooled = buffers[spare];
      pool.kernels.affine(gyp + i * out, scalar_t(a[j]), pp + i * out, scalar_t(b[j]), scalar_t(c[j]), grad_pooled, out);
      pool.backward(grad_pooled, xp + i * g.H * g.W, gxp + i * g.H * g.W, buffers);
    });
  });
  return grad_x;
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // kind 'max' or 'avg'; kernel odd <= 7, padding kernel // 2, stride 1 or 2; the average excludes
  // the padding. float32 (AVX2 or portable) and float64 (portable). Output NCHW.
  m.def("cpu_pool2d_forward(Tensor x, str kind, int kernel, int stride) -> Tensor");
  // d loss / d x; for 'max' the gradient goes to the first maximum of each window (as PyTorch).
  m.def("cpu_pool2d_backward(Tensor grad_y, Tensor x, str kind, int kernel, int stride) -> Tensor");
  // (y, pooled, mean, rstd): y = cpu_group_batch_norm_forward(cpu_pool2d_forward(x, ...), groups, eps).
  m.def("cpu_pool2d_bn_forward(Tensor x, str kind, int kernel, int stride, int[] groups, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  // d loss / d x of the above, given the forward's x, pooled, mean and rstd.
  m.def("cpu_pool2d_bn_backward(Tensor grad_y, Tensor x, Tensor pooled, Tensor mean, Tensor rstd, str kind, "
        "int kernel, int stride, int[] groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_pool2d_forward", &natfast::cpu::pool2d_forward);
  m.impl("cpu_pool2d_backward", &natfast::cpu::pool2d_backward);
  m.impl("cpu_pool2d_bn_forward", &natfast::cpu::pool2d_bn_forward);
  m.impl("cpu_pool2d_bn_backward", &natfast::cpu::pool2d_bn_backward);
}
