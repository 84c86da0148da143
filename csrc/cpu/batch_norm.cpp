// natfast::cpu_group_batch_norm_{forward,backward}: BN without affine parameters using batch
// statistics computed separately per group of consecutive samples (natfast/ops/norm.py), straight
// on the NCHW tensor: no per-group copies. Statistics are accumulated in double per plane and
// summed in a fixed order, so results do not depend on the number of threads.
#include <torch/library.h>

#include <cmath>

#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

// Group boundaries [starts[g], starts[g + 1]) over the batch; no groups: one group of all samples.
std::vector<int64_t> group_starts(at::IntArrayRef groups, int64_t N, const char* op) {
  std::vector<int64_t> starts{0};
  if (groups.empty()) {
    starts.push_back(N);
    return starts;
  }
  for (int64_t size : groups) {
    TORCH_CHECK(size > 0, op, ": group sizes must be positive");
    starts.push_back(starts.back() + size);
  }
  TORCH_CHECK(starts.back() == N, op, ": group sizes add up to ", starts.back(), ", not the batch size ", N);
  return starts;
}

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() >= 2, op, ": expected an (N, C, ...) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": supports float32 and float64, got ", x.scalar_type());
}

// Per-plane sums of u and u * v (v undefined: u * u), planes of `plane` elements, in parallel.
template <typename T>
void plane_sums(const T* u, const T* v, int64_t planes, int64_t plane, std::vector<double>& s1,
                std::vector<double>& s2) {
  const auto& kernels = plane_kernels<T>();
  s1.assign(planes, 0.0);
  s2.assign(planes, 0.0);
  at::parallel_for(0, planes, std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) kernels.sums(u + i * plane, v == nullptr ? nullptr : v + i * plane, plane, &s1[i], &s2[i]);
  });
}

// Sum of per-plane values over the samples of group gi, channel c.
double group_total(const std::vector<double>& s, const std::vector<int64_t>& starts, int64_t gi, int64_t c,
                   int64_t C) {
  double total = 0;
  for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n) total += s[n * C + c];
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_batch_norm_forward(const at::Tensor& x_in,
                                                                        at::IntArrayRef groups, double eps) {
  const char* op = "cpu_group_batch_norm_forward";
  check_input(x_in, op);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), plane = N * C == 0 ? 0 : x.numel() / (N * C);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({G, C}, x.options().dtype(at::kDouble));
  at::Tensor rstd = at::empty({G, C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_group_batch_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<double> s1, s2;
    plane_sums<scalar_t>(xp, nullptr, N * C, plane, s1, s2);
    double* mp = mean.data_ptr<double>();
    double* rp = rstd.data_ptr<double>();
    for (int64_t gi = 0; gi < G; ++gi) {
      const double count = double((starts[gi + 1] - starts[gi]) * plane);
      for (int64_t c = 0; c < C; ++c) {
        const double mu = group_total(s1, starts, gi, c, C) / count;
        const double var = std::max(group_total(s2, starts, gi, c, C) / count - mu * mu, 0.0);
        mp[gi * C + c] = mu;
        rp[gi * C + c] = 1.0 / std::sqrt(var + eps);
      }
    }
    std::vector<int64_t> group_of(N);
    for (int64_t gi = 0; gi < G; ++gi)
      for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n) group_of[n] = gi;
    const auto& kernels = plane_kernels<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t j = group_of[i / C] * C + i % C;
        kernels.affine(xp + i * plane, scalar_t(rp[j]), nullptr, 0, scalar_t(-mp[j] * rp[j]), yp + i * plane, plane);
      }
    });
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
  const int64_t N = x.size(0), C = x.size(1), plane = N * C == 0 ? 0 : x.numel() / (N * C);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  TORCH_CHECK(mean.sizes() == at::IntArrayRef({G, C}) && rstd.sizes() == mean.sizes() &&
                  mean.scalar_type() == at::kDouble && rstd.scalar_type() == at::kDouble,
              op, ": mean and rstd must be float64 (groups, C) as the forward returns them");
  const at::Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_group_batch_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    std::vector<double> sg, sgx;
    plane_sums<scalar_t>(gyp, xp, N * C, plane, sg, sgx);
    // grad_x = rstd (gy - mean(gy) - xhat mean(gy xhat)) = a gy + b x + c per (group, channel).
    const double* mp = mean_c.data_ptr<double>();
    const double* rp = rstd_c.data_ptr<double>();
    std::vector<double> a(G * C), b(G * C), c0(G * C);
    for (int64_t gi = 0; gi < G; ++gi) {
      const double count = double((starts[gi + 1] - starts[gi]) * plane);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = gi * C + c;
        const double mu = mp[j], r = rp[j];
        const double mean_g = group_total(sg, starts, gi, c, C) / count;
        const double mean_gxhat = r * (group_total(sgx, starts, gi, c, C) / count - mu * mean_g);
        a[j] = r;
        b[j] = -r * r * mean_gxhat;
        c0[j] = r * r * mean_gxhat * mu - r * mean_g;
      }
    }
    std::vector<int64_t> group_of(N);
    for (int64_t gi = 0; gi < G; ++gi)
      for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n) group_of[n] = gi;
    const auto& kernels = plane_kernels<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1)), [&](int64_t b0, int64_t e) {
      for (int64_t i = b0; i < e; ++i) {
        const int64_t j = group_of[i / C] * C + i % C;
        kernels.affine(gyp + i * plane, scalar_t(a[j]), xp + i * plane, scalar_t(b[j]), scalar_t(c0[j]),
                       gxp + i * plane, plane);
      }
    });
  });
  return grad_x;
}

}  // namespace
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
