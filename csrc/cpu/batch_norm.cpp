// natfast::cpu_group_batch_norm_{forward,backward}: BN without affine parameters using batch
// statistics computed separately per group of consecutive samples (natfast/ops/norm.py), straight
// on the NCHW tensor: no per-group copies.
#include <torch/library.h>

#include "cpu/ops.h"
#include "cpu/group_norm.h"
#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() >= 2, op, ": expected an (N, C, ...) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": supports float32 and float64, got ", x.scalar_type());
}

int64_t plane_size(const at::Tensor& x) { return x.size(0) * x.size(1) == 0 ? 0 : x.numel() / (x.size(0) * x.size(1)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_batch_norm_forward(const at::Tensor& x_in,
                                                                        at::IntArrayRef groups, double eps) {
  const char* op = "cpu_group_batch_norm_forward";
  check_input(x_in, op);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), plane = plane_size(x);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({G, C}, x.options().dtype(at::kDouble));
  at::Tensor rstd = at::empty({G, C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_group_batch_norm_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<double> s1(N * C), s2(N * C);
    for_each_plane_of(N * C, plane, [&](int64_t i) {
      kernels.sums(xp + i * plane, nullptr, plane, &s1[i], &s2[i]);
    });
    normalize_planes(kernels, xp, yp, s1, s2, starts, C, plane, eps, mean.data_ptr<double>(), rstd.data_ptr<double>());
  });
  return {y, mean, rstd};
}

at::Tensor group_batch_norm_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& mean,
                                     const at::Tensor& rstd, at::IntArrayRef groups) {
  const char* op = "cpu_group_batch_norm_backward";
  check_input(x_in, op);
  TORCH_CHECK(grad_y_in.sizes() == x_in.sizes(), op, ": grad_y and x shapes differ");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_y = grad_y_in.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), plane = plane_size(x);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  TORCH_CHECK(mean.sizes() == at::IntArrayRef({G, C}) && rstd.sizes() == mean.sizes() &&
                  mean.scalar_type() == at::kDouble && rstd.scalar_type() == at::kDouble,
              op, ": mean and rstd must be float64 (groups, C) as the forward returns them");
  const at::Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_group_batch_norm_backward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    std::vector<double> sg(N * C), sgx(N * C);
    for_each_plane_of(N * C, plane, [&](int64_t i) {
      kernels.sums(gyp + i * plane, xp + i * plane, plane, &sg[i], &sgx[i]);
    });
    std::vector<double> a, b, c;
    backward_coefficients(sg, sgx, starts, C, plane, mean_c.data_ptr<double>(), rstd_c.data_ptr<double>(), a, b, c);
    const std::vector<int64_t> rows = stat_rows(starts, C);
    for_each_plane_of(N * C, plane, [&](int64_t i) {
      const int64_t j = rows[i];
      kernels.affine(gyp + i * plane, scalar_t(a[j]), xp + i * plane, scalar_t(b[j]), scalar_t(c[j]),
                     gxp + i * plane, plane);
    });
  });
  return grad_x;
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // (y, mean, rstd): BN(affine=False) with batch statistics per group of consecutive samples
  // (groups: sizes adding up to N; empty: one group); mean and rstd are float64 (groups, C).
  m.def("cpu_group_batch_norm_forward(Tensor x, int[] groups, float eps) -> (Tensor, Tensor, Tensor)");
  // d loss / d x given the forward's input, mean and rstd.
  m.def("cpu_group_batch_norm_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int[] groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_group_batch_norm_forward", &natfast::cpu::group_batch_norm_forward);
  m.impl("cpu_group_batch_norm_backward", &natfast::cpu::group_batch_norm_backward);
}
