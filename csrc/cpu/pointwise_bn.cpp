// natfast::cpu_conv1x1_bn_{forward,backward}: a stride-1 1x1 convolution (optionally of relu(x))
// followed by the supernet's BN (affine=False, batch statistics per group of consecutive samples),
// as in the separable, dilated and preprocessing convolutions. The input x is given as parts that
// x concatenates along channels (one part: x itself): a cell's output is its nodes concatenated,
// and reading the nodes in place spares the preprocessing both the concatenation and a full-size
// ReLU; the forward reads any view of a part in place too (FactorizedReduce's stride-2 pixel
// subsamples). The forward also runs several weights over one input (the two cells that
// preprocess the same cell output, when scoring), reading it once. One sample at a time per thread,
// so what one step writes the next reads from cache:
//   forward:  y_n = sum_k W_k . f(x_nk) and its per-plane sums (W_k: part k's weight columns); then
//             y normalised in place. y is also the normalised value (affine=False), so the backward
//             needs neither mean nor the raw conv.
//   backward: per-plane sums of g and g * y; then per sample t_n = dBN(g_n) (never written out),
//             grad_x_nk = W_k^T . t_n (masked by x_nk > 0 under ReLU) and this sample's weight
//             gradient t_n . f(x_nk)^T, summed in a fixed order (deterministic at any thread count).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cpu/ops.h"
#include "cpu/gemm.h"
#include "cpu/group_norm.h"
#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

// Samples are split into at most this many fixed chunks for the weight gradient's partial sums.
constexpr int64_t kWeightGradChunks = 16;

// One input part as the kernels read it: contiguous (what the backward takes), or, in the forward,
// any view of it, e.g. FactorizedReduce's stride-2 pixel subsamples of a cell's nodes, which are
// then gathered straight into the GEMM's scratch instead of being copied out first.
template <typename T>
struct PartView {
  const T* data;
  int64_t sample_stride, channel_stride, row_stride, col_stride, channels, rows, cols;
  bool dense;     // (C, H, W) contiguous within each sample
  const T* last;  // the view's last value (reads past it may leave the tensor)
};

template <typename T>
PartView<T> part_view(const at::Tensor& part) {
  const bool dense = part.stride(3) == 1 && part.stride(2) == part.size(3) &&
                     part.stride(1) == part.size(2) * part.size(3);
  int64_t last = 0;
  for (int64_t d = 0; d < 4; ++d) last += (part.size(d) - 1) * part.stride(d);
  return {part.data_ptr<T>(), part.stride(0), part.stride(1), part.stride(2), part.stride(3),
          part.size(1),        part.size(2),  part.size(3),   dense, part.data_ptr<T>() + last};
}

// Sample n of the input that the parts concatenate, through the ReLU when relu is on, gathered
// into scratch (a few hundred KB, so it stays in cache for the GEMM that reads it next; one GEMM
// over all channels beats one per part): as plain rows, or, with `packed`, already in the panels
// natfast's GEMM would otherwise pack for every weight (plane_kernels.h). Unpacked and with
// nothing to do, part 0 itself (no copy). `plane`: P elements of scratch for strided parts.
template <typename T>
const T* sample_input(const PlaneKernels<T>& kernels, const std::vector<PartView<T>>& parts,
                      const std::vector<int64_t>& offsets, int64_t n, int64_t P, bool relu, bool packed, T* scratch,
                      T* plane) {
  if (!packed && !relu && parts.size() == 1 && parts[0].dense) return parts[0].data + n * parts[0].sample_stride;
  const int64_t K = offsets.back();
  for (size_t k = 0; k < parts.size(); ++k) {
    const PartView<T>& part = parts[k];
    const T* src = part.data + n * part.sample_stride;
    if (part.dense) {
      if (packed) {
        for (int64_t c = 0; c < part.channels; ++c) kernels.pack_row(src + c * P, offsets[k] + c, K, P, relu, scratch);
      } else if (relu) {
        kernels.relu(src, scratch + offsets[k] * P, part.channels * P);
      } else {
        std::memcpy(scratch + offsets[k] * P, src, part.channels * P * sizeof(T));
      }
      continue;
    }
    // A strided view: each channel's rows copied out (into its place, or into `plane` to be packed
    // from there). Every other column (FactorizedReduce's stride-2 subsamples) goes a vector at a
    // time through the ReLU; other strides are copied one value at a time and the ReLU runs over
    // the copy (a ReLU inside that scalar loop ran at half the speed, with rows of 8).
    const int64_t cols = part.cols, cs = part.col_stride;
    for (int64_t c = 0; c < part.channels; ++c) {
      T* dst = packed ? plane : scratch + (offsets[k] + c) * P;
      for (int64_t h = 0; h < part.rows; ++h) {
        const T* row = src + c * part.channel_stride + h * part.row_stride;
        T* out = dst + h * cols;
        if (cs == 2 && cols > 0) {
          // pick_even reads one value past the row's last: so the view's very last row keeps
          // its last value for the scalar step.
          const int64_t whole = row + 2 * cols - 1 <= part.last ? cols : cols - 1;
          kernels.pick_even(row, out, whole, relu);
          if (whole < cols) out[whole] = !relu || row[2 * whole] > T(0) ? row[2 * whole] : T(0);
        } else {
          for (int64_t x = 0; x < cols; ++x) out[x] = row[x * cs];
        }
      }
      const bool relu_left = relu && cs != 2;
      if (packed) {
        kernels.pack_row(plane, offsets[k] + c, K, P, relu_left, scratch);
      } else if (relu_left) {
        kernels.relu(dst, dst, P);
      }
    }
  }
  return scratch;
}

// y_n (Co x P) = W (Co x Ci) . x_n, x_n as sample_input gave it (packed or plain rows), and the
// sums of each of y_n's planes (into s1[c], s2[c]) while they are in cache.
template <typename T>
void multiply_and_sum(const PlaneKernels<T>& kernels, bool packed, const T* w, int64_t Ci, const T* xn, T* yn,
                      int64_t P, int64_t Co, T* panel, double* s1, double* s2) {
  if (packed)
    kernels.matmul_packed(w, Ci, xn, yn, P, Co, Ci, P);
  else
    gemm(kernels, w, Ci, xn, P, false, false, yn, P, Co, Ci, P, panel);
  for (int64_t c = 0; c < Co; ++c) kernels.sums(yn + c * P, nullptr, P, &s1[c], &s2[c]);
}

void check_weight(const at::Tensor& weight, int64_t channels, at::ScalarType dtype, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(1) == channels, op,
              ": weight must be (C_out, ", channels, ", 1, 1), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == dtype, op, ": weight dtype ", weight.scalar_type(), " differs from the input's ",
              dtype);
}

// The parts, after checking that they concatenate (along channels) to an input that `weight`
// fits; offsets[k] is part k's first channel. Made contiguous unless keep_views (the forward's
// sample_input reads any view).
std::vector<at::Tensor> check_parts(at::TensorList parts_in, const at::Tensor& weight, const char* op,
                                    std::vector<int64_t>& offsets, bool keep_views = false) {
  TORCH_CHECK(!parts_in.empty(), op, ": needs at least one input part");
  std::vector<at::Tensor> parts;
  offsets.assign(1, 0);
  for (const at::Tensor& part : parts_in) {
    check_planes(part, op);
    const at::Tensor& first = parts_in[0];
    TORCH_CHECK(part.size(0) == first.size(0) && part.size(2) == first.size(2) && part.size(3) == first.size(3) &&
                    part.scalar_type() == first.scalar_type(),
                op, ": input parts must share batch, height, width and dtype, got ", first.sizes(), " ",
                first.scalar_type(), " and ", part.sizes(), " ", part.scalar_type());
    parts.push_back(keep_views ? part : part.contiguous());
    offsets.push_back(offsets.back() + part.size(1));
  }
  check_weight(weight, offsets.back(), parts[0].scalar_type(), op);
  return parts;
}

// The forward for each weight over the same input: each sample's input is gathered (and ReLU'd)
// once for all of them.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> forward_each(const char* op, at::TensorList parts_in,
                                                                          at::TensorList weights_in,
                                                                          at::IntArrayRef groups, double eps,
                                                                          bool relu_input) {
  TORCH_CHECK(!weights_in.empty(), op, ": needs at least one weight");
  std::vector<int64_t> offsets;
  const std::vector<at::Tensor> parts = check_parts(parts_in, weights_in[0], op, offsets, /*keep_views=*/true);
  const at::Tensor& x0 = parts[0];
  const int64_t N = x0.size(0), Ci = offsets.back(), P = x0.size(2) * x0.size(3);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  std::vector<at::Tensor> weights, ys, rstds;
  for (const at::Tensor& w : weights_in) {
    check_weight(w, Ci, x0.scalar_type(), op);
    weights.push_back(w.contiguous());
    ys.push_back(at::empty({N, w.size(0), x0.size(2), x0.size(3)}, x0.options()));
    rstds.push_back(at::empty({G, w.size(0)}, x0.options().dtype(at::kDouble)));
  }
  const size_t W = weights.size();
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "cpu_conv1x1_bn", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    std::vector<PartView<scalar_t>> xp;
    for (const at::Tensor& part : parts) xp.push_back(part_view<scalar_t>(part));
    // natfast's GEMM takes the input packed as it is gathered; a BLAS, as plain rows.
    const bool packed = blas_for(kernels, false) == nullptr;
    const bool gathers = packed || relu_input || xp.size() > 1 || !xp[0].dense;
    std::vector<std::vector<double>> s1(W), s2(W);
    for (size_t i = 0; i < W; ++i) {
      s1[i].resize(N * weights[i].size(0));
      s2[i].resize(N * weights[i].size(0));
    }
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> panel(packed ? 0 : matmul_panel_size(Ci)), scratch(gathers ? Ci * P : 0),
          plane(packed ? P : 0);  // (strided parts, gathered before they are packed)
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* xn =
            sample_input(kernels, xp, offsets, n, P, relu_input, packed, scratch.data(), plane.data());
        for (size_t i = 0; i < W; ++i) {
          const int64_t Co = weights[i].size(0);
          scalar_t* yn = ys[i].data_ptr<scalar_t>() + n * Co * P;
          multiply_and_sum(kernels, packed, weights[i].data_ptr<scalar_t>(), Ci, xn, yn, P, Co, panel.data(),
                           &s1[i][n * Co], &s2[i][n * Co]);
        }
      }
    });
    for (size_t i = 0; i < W; ++i) {
      scalar_t* yp = ys[i].data_ptr<scalar_t>();
      at::Tensor mean = at::empty({G, weights[i].size(0)}, x0.options().dtype(at::kDouble));
      normalize_planes(kernels, yp, yp, s1[i], s2[i], starts, weights[i].size(0), P, eps, mean.data_ptr<double>(),
                       rstds[i].data_ptr<double>());
    }
  });
  return {ys, rstds};
}

}  // namespace

// FactorizedReduce's forward, scoring: y = BN(cat(conv1x1(f(even), weight_a), conv1x1(f(odd), weight_b)))
// with even, odd the parts' stride-2 pixel subsamples (views). Both halves of a sample are gathered
// one after the other, while the rows the second reads (the first's neighbours) are still in
// cache, and written into one output: not two passes over the input and a concatenation.
at::Tensor factorized_reduce_bn_forward(at::TensorList even_in, at::TensorList odd_in, const at::Tensor& weight_a,
                                        const at::Tensor& weight_b, at::IntArrayRef groups, double eps,
                                        bool relu_input) {
  const char* op = "cpu_factorized_reduce_bn_forward";
  std::vector<int64_t> offsets, odd_offsets;
  const std::vector<at::Tensor> even = check_parts(even_in, weight_a, op, offsets, /*keep_views=*/true);
  const std::vector<at::Tensor> odd = check_parts(odd_in, weight_b, op, odd_offsets, /*keep_views=*/true);
  const at::Tensor& x0 = even[0];
  TORCH_CHECK(offsets == odd_offsets && odd[0].size(0) == x0.size(0) && odd[0].size(2) == x0.size(2) &&
                  odd[0].size(3) == x0.size(3) && odd[0].scalar_type() == x0.scalar_type(),
              op, ": the even and odd parts must have the same shapes and dtype");
  const int64_t N = x0.size(0), Ci = offsets.back(), P = x0.size(2) * x0.size(3);
  const at::Tensor wa = weight_a.contiguous(), wb = weight_b.contiguous();
  const int64_t Ca = wa.size(0), Co = Ca + wb.size(0);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  at::Tensor y = at::empty({N, Co, x0.size(2), x0.size(3)}, x0.options());
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "cpu_factorized_reduce_bn_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    std::vector<PartView<scalar_t>> halves[2];
    for (const at::Tensor& part : even) halves[0].push_back(part_view<scalar_t>(part));
    for (const at::Tensor& part : odd) halves[1].push_back(part_view<scalar_t>(part));
    const scalar_t* weights[2] = {wa.data_ptr<scalar_t>(), wb.data_ptr<scalar_t>()};
    const int64_t first[2] = {0, Ca}, rows[2] = {Ca, Co - Ca};
    const bool packed = blas_for(kernels, false) == nullptr;  // as forward_each
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<double> s1(N * Co), s2(N * Co);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> panel(packed ? 0 : matmul_panel_size(Ci)), scratch(Ci * P), plane(packed ? P : 0);
      for (int64_t n = begin; n < end; ++n)
        for (int h = 0; h < 2; ++h) {
          const scalar_t* xn =
              sample_input(kernels, halves[h], offsets, n, P, relu_input, packed, scratch.data(), plane.data());
          const int64_t i = n * Co + first[h];
          multiply_and_sum(kernels, packed, weights[h], Ci, xn, yp + i * P, P, rows[h], panel.data(), &s1[i], &s2[i]);
        }
    });
    std::vector<double> mean(G * Co), rstd(G * Co);
    normalize_planes(kernels, yp, yp, s1, s2, starts, Co, P, eps, mean.data(), rstd.data());
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> conv1x1_bn_forward(at::TensorList parts_in, const at::Tensor& weight_in,
                                                      at::IntArrayRef groups, double eps, bool relu_input) {
  auto [ys, rstds] = forward_each("cpu_conv1x1_bn_forward", parts_in, {weight_in}, groups, eps, relu_input);
  return {ys[0], rstds[0]};
}

std::vector<at::Tensor> conv1x1_bn_forward_each(at::TensorList parts, at::TensorList weights, at::IntArrayRef groups,
                                                double eps, bool relu_input) {
  return std::get<0>(forward_each("cpu_conv1x1_bn_forward_each", parts, weights, groups, eps, relu_input));
}

std::tuple<std::vector<at::Tensor>, at::Tensor> conv1x1_bn_backward(const at::Tensor& grad_y_in,
                                                                    at::TensorList parts_in,
                                                                    const at::Tensor& weight_in, const at::Tensor& y_in,
                                                                    const at::Tensor& rstd_in, at::IntArrayRef groups,
                                                                    bool relu_input) {
  const char* op = "cpu_conv1x1_bn_backward";
  std::vector<int64_t> offsets;
  const std::vector<at::Tensor> parts = check_parts(parts_in, weight_in, op, offsets);
  const at::Tensor weight = weight_in.contiguous(), y = y_in.contiguous();
  const at::Tensor& x0 = parts[0];
  const int64_t N = x0.size(0), Ci = offsets.back(), Co = weight.size(0), P = x0.size(2) * x0.size(3);
  const int64_t K = int64_t(parts.size());
  TORCH_CHECK(y.sizes() == at::IntArrayRef({N, Co, x0.size(2), x0.size(3)}) && grad_y_in.sizes() == y.sizes(), op,
              ": grad_y and y must be (N, C_out, H, W) as the forward returns y");
  const at::Tensor grad_y = grad_y_in.to(x0.scalar_type()).contiguous();
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  TORCH_CHECK(rstd_in.sizes() == at::IntArrayRef({G, Co}) && rstd_in.scalar_type() == at::kDouble, op,
              ": rstd must be float64 (groups, C_out) as the forward returns it");
  const at::Tensor rstd = rstd_in.contiguous();
  std::vector<at::Tensor> grad_parts;
  for (const at::Tensor& part : parts) grad_parts.push_back(at::empty_like(part));
  at::Tensor grad_w = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "cpu_conv1x1_bn", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    std::vector<PartView<scalar_t>> xp;
    std::vector<scalar_t*> gxp;
    for (int64_t k = 0; k < K; ++k) {
      xp.push_back(part_view<scalar_t>(parts[k]));
      gxp.push_back(grad_parts[k].data_ptr<scalar_t>());
    }
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* gp = grad_y.data_ptr<scalar_t>();
    // dBN(g) = rstd (g - mean(g) - y mean(g y)) = a g + b y + c per (group, channel).
    std::vector<double> sg(N * Co), sgy(N * Co);
    for_each_plane_of(N * Co, P, [&](int64_t i) { kernels.sums(gp + i * P, yp + i * P, P, &sg[i], &sgy[i]); });
    const std::vector<double> tg = group_totals(sg, starts, Co), tgy = group_totals(sgy, starts, Co);
    std::vector<scalar_t> a(G * Co), b(G * Co), c(G * Co);
    const double* r = rstd.data_ptr<double>();
    for (int64_t j = 0; j < G * Co; ++j) {
      const double count = double((starts[j / Co + 1] - starts[j / Co]) * P);
      a[j] = scalar_t(r[j]);
      b[j] = scalar_t(-r[j] * tgy[j] / count);
      c[j] = scalar_t(-r[j] * tg[j] / count);
    }
    const std::vector<int64_t> rows = stat_rows(starts, Co);
    // W^T, so grad_x's GEMM reads its rows contiguously like the forward's; part k's rows start at
    // offsets[k].
    const at::Tensor wt = weight.view({Co, Ci}).t().contiguous();
    const scalar_t* wtp = wt.data_ptr<scalar_t>();
    // The weight gradient is summed per fixed chunk of samples, then over the chunks in order: the
    // same sums in the same order at any thread count.
    const int64_t chunks = std::min<int64_t>(N, kWeightGradChunks), chunk = (N + chunks - 1) / chunks;
    std::vector<scalar_t> partial_w(chunks * Co * Ci);
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> t(Co * P), panel(matmul_panel_size(std::max(Co, P)));
      std::vector<scalar_t> scratch(relu_input || K > 1 ? Ci * P : 0);
      for (int64_t q = first; q < last; ++q) {
        scalar_t* wq = partial_w.data() + q * Co * Ci;
        for (int64_t n = q * chunk; n < std::min(N, (q + 1) * chunk); ++n) {
          for (int64_t co = 0; co < Co; ++co) {
            const int64_t i = n * Co + co, j = rows[i];
            kernels.affine(gp + i * P, a[j], yp + i * P, b[j], c[j], t.data() + co * P, P);
          }
          for (int64_t k = 0; k < K; ++k) {
            const int64_t ck = offsets[k + 1] - offsets[k];
            scalar_t* gxnk = gxp[k] + n * ck * P;
            gemm(kernels, wtp + offsets[k] * Co, Co, t.data(), P, false, false, gxnk, P, ck, Co, P, panel.data());
            if (relu_input) kernels.relu_mask(xp[k].data + n * ck * P, gxnk, ck * P);  // none where x <= 0
          }
          // (Co x Ci) += t_n (Co x P) . f(x_n)^T: f(x_n) is B given transposed.
          const scalar_t* xn = sample_input(kernels, xp, offsets, n, P, relu_input, false, scratch.data(),
                                             static_cast<scalar_t*>(nullptr));
          gemm(kernels, t.data(), P, xn, P, true, n > q * chunk, wq, Ci, Co, P, Ci, panel.data());
        }
      }
    });
    scalar_t* gwp = grad_w.data_ptr<scalar_t>();
    for (int64_t e = 0; e < Co * Ci; ++e) {
      scalar_t total = 0;
      for (int64_t q = 0; q < chunks; ++q) total += partial_w[q * Co * Ci + e];
      gwp[e] = total;
    }
  });
  return {grad_parts, grad_w};
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // (y, rstd): y = BN(conv1x1(relu(x) if relu_input else x, weight)) with x = cat(parts, dim=1), BN
  // without affine parameters with batch statistics per group of consecutive samples (groups: sizes
  // adding up to N; empty: one group); rstd is float64 (groups, C_out). Stride 1.
  m.def(
      "cpu_conv1x1_bn_forward(Tensor[] parts, Tensor weight, int[] groups, float eps, bool relu_input) -> "
      "(Tensor, Tensor)");
  // [y for each weight]: cpu_conv1x1_bn_forward's y for every weight over the same parts, each
  // sample's input gathered (and ReLU'd) once for all. Forward only (scoring: nothing is recorded).
  m.def(
      "cpu_conv1x1_bn_forward_each(Tensor[] parts, Tensor[] weights, int[] groups, float eps, bool relu_input) -> "
      "Tensor[]");
  // BN(cat(conv1x1(f(cat(even)), weight_a), conv1x1(f(cat(odd)), weight_b))), f = relu if relu_input:
  // FactorizedReduce given its parts' stride-2 subsamples (views), forward only (scoring).
  m.def(
      "cpu_factorized_reduce_bn_forward(Tensor[] even, Tensor[] odd, Tensor weight_a, Tensor weight_b, int[] groups, "
      "float eps, bool relu_input) -> Tensor");
  // (grad of each part, grad_weight) given the forward's parts, weight, y and rstd.
  m.def(
      "cpu_conv1x1_bn_backward(Tensor grad_y, Tensor[] parts, Tensor weight, Tensor y, Tensor rstd, int[] groups, "
      "bool relu_input) -> (Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_conv1x1_bn_forward", &natfast::cpu::conv1x1_bn_forward);
  m.impl("cpu_conv1x1_bn_forward_each", &natfast::cpu::conv1x1_bn_forward_each);
  m.impl("cpu_conv1x1_bn_backward", &natfast::cpu::conv1x1_bn_backward);
  m.impl("cpu_factorized_reduce_bn_forward", &natfast::cpu::factorized_reduce_bn_forward);
}
