#pragma once
// The per-group batch-norm arithmetic shared by batch_norm.cpp and pool_bn.cpp: groups of consecutive
// samples, their statistics from per-plane sums, and the backward's per-(group, channel)
// coefficients. Sums are float64 and combined in a fixed order (thread-count independent).
// (Not for kernels_*.cpp: see plane_ops.h.)
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {

// Group g is samples [starts[g], starts[g + 1]); no groups: one group of all N samples.
inline std::vector<int64_t> group_starts(at::IntArrayRef groups, int64_t N, const char* op) {
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

// Row (group * C + channel) of the (groups, C) statistics that plane i = n * C + c uses.
inline std::vector<int64_t> stat_rows(const std::vector<int64_t>& starts, int64_t C) {
  std::vector<int64_t> rows(starts.back() * C);
  for (size_t gi = 0; gi + 1 < starts.size(); ++gi)
    for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n)
      for (int64_t c = 0; c < C; ++c) rows[n * C + c] = int64_t(gi) * C + c;
  return rows;
}

// Per-(group, channel) totals of per-plane values s (planes n * C + c).
inline std::vector<double> group_totals(const std::vector<double>& s, const std::vector<int64_t>& starts, int64_t C) {
  const int64_t G = int64_t(starts.size()) - 1;
  std::vector<double> total(G * C, 0.0);
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n)
      for (int64_t c = 0; c < C; ++c) total[gi * C + c] += s[n * C + c];
  return total;
}

// mean and 1 / sqrt(biased variance + eps) per (group, channel) from per-plane sums of x and x^2.
inline void group_moments(const std::vector<double>& sum, const std::vector<double>& sum_sq,
                          const std::vector<int64_t>& starts, int64_t C, int64_t plane, double eps, double* mean,
                          double* rstd) {
  const std::vector<double> s1 = group_totals(sum, starts, C), s2 = group_totals(sum_sq, starts, C);
  for (size_t j = 0; j < s1.size(); ++j) {
    const int64_t gi = int64_t(j) / C;
    const double count = double((starts[gi + 1] - starts[gi]) * plane);
    const double mu = s1[j] / count;
    mean[j] = mu;
    rstd[j] = 1.0 / std::sqrt(std::max(s2[j] / count - mu * mu, 0.0) + eps);
  }
}

// The forward's last step, shared by the BN and the fused pool+BN operators: from per-plane sums
// s1, s2 of x, write mean and rstd per (group, channel) and y = (x - mean) * rstd for every plane.
template <typename scalar_t, typename Kernels>
void normalize_planes(const Kernels& kernels, const scalar_t* x, scalar_t* y, const std::vector<double>& s1,
                      const std::vector<double>& s2, const std::vector<int64_t>& starts, int64_t C, int64_t plane,
                      double eps, double* mean, double* rstd) {
  group_moments(s1, s2, starts, C, plane, eps, mean, rstd);
  const std::vector<int64_t> rows = stat_rows(starts, C);
  for_each_plane_of(starts.back() * C, plane, [&](int64_t i) {
    const int64_t j = rows[i];
    kernels.affine(x + i * plane, scalar_t(rstd[j]), nullptr, 0, scalar_t(-mean[j] * rstd[j]), y + i * plane, plane);
  });
}

// grad_x = rstd (gy - mean(gy) - xhat mean(gy xhat)) = a gy + b x + c per (group, channel), from
// per-plane sums of gy and gy * x.
inline void backward_coefficients(const std::vector<double>& sum_g, const std::vector<double>& sum_gx,
                                  const std::vector<int64_t>& starts, int64_t C, int64_t plane, const double* mean,
                                  const double* rstd, std::vector<double>& a, std::vector<double>& b,
                                  std::vector<double>& c) {
  const std::vector<double> sg = group_totals(sum_g, starts, C), sgx = group_totals(sum_gx, starts, C);
  a.resize(sg.size());
  b.resize(sg.size());
  c.resize(sg.size());
  for (size_t j = 0; j < sg.size(); ++j) {
    const int64_t gi = int64_t(j) / C;
    const double count = double((starts[gi + 1] - starts[gi]) * plane);
    const double mu = mean[j], r = rstd[j];
    const double mean_g = sg[j] / count;
    const double mean_gxhat = r * (sgx[j] / count - mu * mean_g);
    a[j] = r;
    b[j] = -r * r * mean_gxhat;
    c[j] = r * r * mean_gxhat * mu - r * mean_g;
  }
}

}  // namespace cpu
}  // namespace natfast
