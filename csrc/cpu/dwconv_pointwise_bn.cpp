// natfast::cpu_dwconv_pointwise_bn_forward: the supernet's dil_conv, or one half of its sep_conv,
// forward only (scoring architectures under inference mode keeps nothing for a backward):
//   y = BN(conv1x1(dwconv(relu(a x + b))))   BN without affine parameters, batch statistics per
//                                            group of consecutive samples.
// The unfused forward (relu_dwconv, then conv1x1_bn) writes the depthwise output, reads it back,
// writes the 1x1 output and then reads and writes it again to normalise it: on a CPU with little
// memory bandwidth those passes are most of a sep_conv's time. Here one sample at a time per thread
// goes through the depthwise planes into a cache-resident buffer, the 1x1 GEMM reads that buffer, and
// the GEMM's output is summed for the statistics while still in cache: the input is read once and
// the output written once, plus the normalising pass. With normalize=false that pass is left to the
// next consumer, which gets (scale, shift) such that BN(raw) = scale * raw + shift: the second half
// of a sep_conv takes them as its input affine (a, b), applied to each plane in cache.
// The arithmetic is the unfused CPU kernels' own, in the same order, so the results are the same.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "cpu/ops.h"
#include "cpu/gemm.h"
#include "cpu/group_norm.h"
#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {

// (y, scale, shift); scale and shift are float64 (groups, C_out), y = scale * raw + shift.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_pointwise_bn_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& in_shift,
    const at::Tensor& dw_in, const at::Tensor& pw_in, int64_t stride, int64_t dilation, at::IntArrayRef groups,
    double eps, bool normalize) {
  const char* op = "cpu_dwconv_pointwise_bn_forward";
  check_planes(x_in, op);
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(dw_in.dim() == 4 && dw_in.size(0) == C && dw_in.size(1) == 1 && dw_in.size(2) == dw_in.size(3), op,
              ": depthwise weight must be (", C, ", 1, k, k), got ", dw_in.sizes());
  TORCH_CHECK(pw_in.dim() == 4 && pw_in.size(1) == C && pw_in.size(2) == 1 && pw_in.size(3) == 1, op,
              ": pointwise weight must be (C_out, ", C, ", 1, 1), got ", pw_in.sizes());
  TORCH_CHECK(dw_in.scalar_type() == x_in.scalar_type() && pw_in.scalar_type() == x_in.scalar_type(), op,
              ": weights and input dtypes differ");
  check_window(dw_in.size(2), stride, dilation, op);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  TORCH_CHECK(in_scale.has_value() == in_shift.has_value(), op, ": give both in_scale and in_shift, or neither");
  const bool affine = in_scale.has_value();
  at::Tensor a_in, b_in;
  if (affine) {
    a_in = in_scale->contiguous();
    b_in = in_shift->contiguous();
    for (const at::Tensor* t : {&a_in, &b_in})
      TORCH_CHECK(t->scalar_type() == at::kDouble && t->sizes() == at::IntArrayRef({G, C}), op,
                  ": in_scale and in_shift must be float64 (groups, C) = (", G, ", ", C, "), got ", t->sizes(), " ",
                  t->scalar_type());
  }
  const PlaneGeometry g = plane_geometry(H, W, dw_in.size(2), stride, dilation);
  const int64_t Co = pw_in.size(0), HW = H * W, Po = g.Ho * g.Wo, kk = g.k * g.k;
  const at::Tensor x = x_in.contiguous(), dw = dw_in.contiguous(), pw = pw_in.contiguous();
  at::Tensor y = at::empty({N, Co, g.Ho, g.Wo}, x.options());
  at::Tensor mean = at::empty({G, Co}, x.options().dtype(at::kDouble));
  at::Tensor scale = at::empty({G, Co}, x.options().dtype(at::kDouble));
  std::vector<int64_t> group_of(N);
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t n = starts[gi]; n < starts[gi + 1]; ++n) group_of[n] = gi;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_dwconv_pointwise_bn_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    // The input affine in the input's dtype, as the unfused path's normalising pass applies it.
    std::vector<scalar_t> a, b;
    if (affine) {
      const double* ap = a_in.data_ptr<double>();
      const double* bp = b_in.data_ptr<double>();
      for (int64_t j = 0; j < G * C; ++j) {
        a.push_back(scalar_t(ap[j]));
        b.push_back(scalar_t(bp[j]));
      }
    }
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dwp = dw.data_ptr<scalar_t>();
    const scalar_t* pwp = pw.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<double> s1(N * Co), s2(N * Co);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> padded(g.scratch, scalar_t(0)), plane(affine ? HW : 0), depthwise(C * Po),
          panel(matmul_panel_size(C));
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* src = xp + (n * C + c) * HW;
          if (affine) {
            const int64_t j = group_of[n] * C + c;
            kernels.affine(src, a[j], nullptr, 0, b[j], plane.data(), HW);
            src = plane.data();
          }
          kernels.relu_dwconv_forward(src, dwp + c * kk, depthwise.data() + c * Po, g, padded.data());
        }
        scalar_t* yn = yp + n * Co * Po;
        gemm(kernels, pwp, C, depthwise.data(), Po, false, false, yn, Po, Co, C, Po, panel.data());
        for (int64_t c = 0; c < Co; ++c) kernels.sums(yn + c * Po, nullptr, Po, &s1[n * Co + c], &s2[n * Co + c]);
      }
    });
    double* mp = mean.data_ptr<double>();
    double* rp = scale.data_ptr<double>();
    if (normalize) {
      normalize_planes(kernels, yp, yp, s1, s2, starts, Co, Po, eps, mp, rp);
    } else {
      group_moments(s1, s2, starts, Co, Po, eps, mp, rp);
    }
  });
  // BN(raw) = (raw - mean) * rstd = scale * raw + shift.
  at::Tensor shift = -mean * scale;
  return {y, scale, shift};
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // (y, scale, shift): y = BN(conv1x1(dwconv(relu(in_scale * x + in_shift)))), forward only;
  // dwconv: depthwise weight (C, 1, k, k), stride, dilation, 'same' padding; conv1x1: weight
  // (C_out, C, 1, 1); BN without affine parameters, batch statistics per group of consecutive
  // samples (groups: sizes adding up to N; empty: one group). in_scale, in_shift: optional float64
  // (groups, C). normalize=false returns the raw 1x1 output, with y_normalised = scale * y + shift
  // (float64 (groups, C_out)); normalize=true returns y normalised (and the scale and shift used).
  m.def(
      "cpu_dwconv_pointwise_bn_forward(Tensor x, Tensor? in_scale, Tensor? in_shift, Tensor dw_weight, "
      "Tensor pw_weight, int stride, int dilation, int[] groups, float eps, bool normalize) -> "
      "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_dwconv_pointwise_bn_forward", &natfast::cpu::dwconv_pointwise_bn_forward);
}
