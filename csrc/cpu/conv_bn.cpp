// natfast::cpu_relu_conv_bn_forward: the supernet's conv_kxk candidate, forward only (scoring):
//   y = BN(conv2d(relu(x), weight))   k x k, 'same' padding k / 2, stride s; BN without affine
//                                     parameters, batch statistics per group of consecutive samples.
// The unfused path (oneDNN's convolution, then the BN kernel) ran at half this core's FMA peak at
// the supernet's narrowest width (20 channels) and reads and writes the output twice more for the
// BN. Two ways here, both summing each output plane for the BN while it is in cache, then
// normalising in place, as the fused 1x1 kernels do:
// * k = 3, stride 1, even sizes (every conv_3x3 of a normal cell): Winograd's F(2x2, 3x3)
//   (winograd_conv), 2.25x fewer multiplications;
// * otherwise one GEMM per sample (direct_conv), W (C_out x C_in k k) times the input's k k shifted
//   copies, on natfast's packed GEMM (plane_kernels.h):
//   - relu(x) of a sample is written once into zero-padded planes, split by stride phase (for
//     s = 2: even and odd rows times even and odd columns), each Wq = ceil((W + 2 pad) / s) wide;
//   - then tap (ky, kx) of channel c is one contiguous run of its phase plane, starting at
//     (ky / s, kx / s): the GEMM's B row (c, ky, kx) is packed straight from there, with no
//     im2col buffer and no bounds checks. The price: the GEMM computes Ho x Wq outputs, of which
//     Wq - Wo columns per row fall in the padding and are dropped (2 of 34 at 32x32, stride 1).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/ops.h"
#include "cpu/gemm.h"
#include "cpu/group_norm.h"
#include "cpu/plane_ops.h"

namespace natfast {
namespace cpu {
namespace {

// Columns of B packed at a time: the packed block (C_in k k rows) stays within about 192 KB, so it
// is still in L2 when the GEMM reads it. A multiple of 3 vectors (the GEMM's widest panel) for
// every build's vector width.
int64_t column_chunk(int64_t K) {
  constexpr int64_t panel = kMatmulPanelVectors * kMaxVector, budget = 48 * 1024;
  return std::max<int64_t>(panel, budget / std::max<int64_t>(K, 1) / panel * panel);
}

// The zero-padded, stride-phase-split input of one sample (see the top of the file).
struct PhasePlanes {
  int64_t k, s, pad, H, W, Ho, Wo, Hq, Wq, phase;

  PhasePlanes(int64_t H_, int64_t W_, int64_t k_, int64_t s_) : k(k_), s(s_), pad(k_ / 2), H(H_), W(W_) {
    Ho = (H + 2 * pad - k) / s + 1;
    Wo = (W + 2 * pad - k) / s + 1;
    Hq = (H + 2 * pad + s - 1) / s;
    Wq = (W + 2 * pad + s - 1) / s;
    // Tap (ky, kx)'s run of Ho * Wq values starts at (ky / s) * Wq + kx / s and, as
    // (k - 1) / s + Ho <= Hq, ends before Hq * Wq + k: the slack keeps it inside.
    phase = Hq * Wq + k;
  }
  int64_t per_channel() const { return s * s * phase; }
  int64_t columns() const { return Ho * Wq; }
  // Where B's row (c, ky, kx) starts.
  int64_t row_offset(int64_t c, int64_t ky, int64_t kx) const {
    return c * per_channel() + ((ky % s) * s + kx % s) * phase + (ky / s) * Wq + kx / s;
  }
};

// relu(x) of one channel's H x W plane into its phase planes. Only in-image values are written:
// the padding, zeroed once, stays zero for every sample.
template <typename T>
void fill_phases(const PlaneKernels<T>& kernels, const T* x, const PhasePlanes& g, T* dst) {
  for (int64_t a = 0; a < g.s; ++a)
    for (int64_t b = 0; b < g.s; ++b) {
      T* plane = dst + (a * g.s + b) * g.phase;
      // Phase column c holds input column s c + b - pad: the first and last inside the image.
      const int64_t c0 = std::max<int64_t>(0, (g.pad - b + g.s - 1) / g.s);
      const int64_t c1 = std::min<int64_t>(g.Wq - 1, (g.W - 1 + g.pad - b) / g.s);
      const int64_t count = c1 - c0 + 1;
      if (count <= 0) continue;
      for (int64_t r = 0; r < g.Hq; ++r) {
        const int64_t iy = g.s * r + a - g.pad;
        if (iy < 0 || iy >= g.H) continue;
        const T* row = x + iy * g.W + g.s * c0 + b - g.pad;
        T* out = plane + r * g.Wq + c0;
        if (g.s == 1) {
          kernels.relu(row, out, count);
        } else if (g.s == 2) {
          // pick_even reads one value past the last it uses: the last value goes on its own.
          kernels.pick_even(row, out, count - 1, true);
          out[count - 1] = row[2 * (count - 1)] > T(0) ? row[2 * (count - 1)] : T(0);
        } else {
          for (int64_t c = 0; c < count; ++c) out[c] = row[g.s * c] > T(0) ? row[g.s * c] : T(0);
        }
      }
    }
}

// relu(x) (or x) of one channel (H x W, W even) into the two column phases of its plane
// zero-padded by one, as winograd_input reads it (plane_kernels.h): rows 0 .. H + 1, each W / 2 + 1
// wide. Only in-image values are written: the padding, zeroed once, stays zero for every sample.
template <typename T>
void fill_column_phases(const PlaneKernels<T>& kernels, const T* x, int64_t H, int64_t W, bool relu, T* even,
                        T* odd) {
  const int64_t half = W / 2, rs = half + 1;
  for (int64_t iy = 0; iy < H; ++iy) {
    const T* row = x + iy * W;
    T* e = even + (iy + 1) * rs;
    T* o = odd + (iy + 1) * rs;
    kernels.pick_even(row, o, half, relu);  // padded column 2c + 1: input column 2c
    // Padded column 2c: input column 2c - 1. pick_even would read one past the row for the last.
    kernels.pick_even(row + 1, e + 1, half - 1, relu);
    e[half] = !relu || row[W - 1] > T(0) ? row[W - 1] : T(0);
  }
}

// conv2d(relu(x), w) (conv2d(x, w) without relu) for k = 3, stride 1, H and W even, by Winograd's
// F(2x2, 3x3): per block of 2 x 2 output tiles, the 16 transformed inputs (C_in x tiles each), 16
// GEMMs with the transformed weight (C_out x C_in each) and the inverse transform into y: 2.25x
// fewer multiplications than the direct GEMM, the transforms being additions. Blocks of tiles keep
// the transformed inputs and the GEMMs' outputs within about 128 KB each; at small planes a block
// spans several samples. Also each plane's sums for the BN (s1, s2), unless they are null.
template <typename T>
void winograd_conv(const PlaneKernels<T>& kernels, const T* x, const T* w, T* y, int64_t N, int64_t Ci,
                   int64_t Co, int64_t H, int64_t W, bool relu, double* s1, double* s2) {
  const int64_t Th = H / 2, Tw = W / 2, rs = Tw + 1, plane = (H + 2) * rs, P = H * W;
  // U[xi] (C_out x C_in) = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], per (co, ci).
  std::vector<T> U(16 * Co * Ci);
  for (int64_t co = 0; co < Co; ++co)
    for (int64_t ci = 0; ci < Ci; ++ci) {
      const T* g = w + (co * Ci + ci) * 9;
      for (int64_t i = 0; i < 4; ++i) {
        T r[3];
        for (int64_t j = 0; j < 3; ++j)
          r[j] = i == 0 ? g[j] : i == 3 ? g[6 + j] : (g[j] + (i == 1 ? g[3 + j] : -g[3 + j]) + g[6 + j]) / T(2);
        const T row[4] = {r[0], (r[0] + r[1] + r[2]) / T(2), (r[0] - r[1] + r[2]) / T(2), r[2]};
        for (int64_t j = 0; j < 4; ++j) U[((4 * i + j) * Co + co) * Ci + ci] = row[j];
      }
    }
  // Rows of tiles per block: about 2048 / max(C_in, C_out) tiles (their transformed inputs and GEMM
  // outputs take about 128 KB each; 1024 and 8192 were slower), and at least a vector of them (a
  // GEMM over fewer columns runs its scalar tail: 4 tiles a block at C = 80, 8x8, took 9x as long).
  const int64_t block_rows = std::max((kMaxVector + Tw - 1) / Tw, 2048 / std::max(Ci, Co) / Tw);
  const int64_t S = std::max<int64_t>(1, block_rows / Th);  // samples per group
  at::parallel_for(0, (N + S - 1) / S, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> phases(S * Ci * 2 * plane, T(0)), V(16 * Ci * block_rows * Tw), M(16 * Co * block_rows * Tw),
        panel(matmul_panel_size(Ci));
    for (int64_t group = begin; group < end; ++group) {
      const int64_t n0 = group * S, samples = std::min(S, N - n0), rows = samples * Th;
      for (int64_t s = 0; s < samples; ++s)
        for (int64_t ci = 0; ci < Ci; ++ci) {
          T* even = phases.data() + (s * Ci + ci) * 2 * plane;
          fill_column_phases(kernels, x + ((n0 + s) * Ci + ci) * P, H, W, relu, even, even + plane);
        }
      for (int64_t q0 = 0; q0 < rows; q0 += block_rows) {
        const int64_t count = std::min(block_rows, rows - q0), tiles = count * Tw;
        for (int64_t q = q0; q < q0 + count; ++q)
          for (int64_t ci = 0; ci < Ci; ++ci) {
            const T* even = phases.data() + ((q / Th) * Ci + ci) * 2 * plane + 2 * (q % Th) * rs;
            kernels.winograd_input(even, even + plane, rs, V.data() + ci * tiles + (q - q0) * Tw, Ci * tiles, Tw);
          }
        for (int64_t xi = 0; xi < 16; ++xi)
          gemm(kernels, U.data() + xi * Co * Ci, Ci, V.data() + xi * Ci * tiles, tiles, false, false,
               M.data() + xi * Co * tiles, tiles, Co, Ci, tiles, panel.data());
        for (int64_t q = q0; q < q0 + count; ++q)
          for (int64_t co = 0; co < Co; ++co)
            kernels.winograd_output(M.data() + co * tiles + (q - q0) * Tw, Co * tiles,
                                    y + ((n0 + q / Th) * Co + co) * P + 2 * (q % Th) * W, W, Tw);
      }
      if (s1 != nullptr)
        for (int64_t i = n0 * Co; i < (n0 + samples) * Co; ++i) kernels.sums(y + i * P, nullptr, P, &s1[i], &s2[i]);
    }
  });
}

// conv2d(relu(x), w) for any odd k and stride as one GEMM per sample on the phase planes (see the
// top of the file), and each plane's sums for the BN (s1, s2).
template <typename T>
void direct_conv(const PlaneKernels<T>& kernels, const T* x, const T* w, T* y, int64_t N, int64_t Ci, int64_t Co,
                 const PhasePlanes& g, std::vector<double>& s1, std::vector<double>& s2) {
  const int64_t k = g.k, K = Ci * k * k, Pq = g.columns(), Po = g.Ho * g.Wo;
  const int64_t chunk = std::min(Pq, column_chunk(K));
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> planes(Ci * g.per_channel(), T(0)), packed(K * chunk), out(Co * Pq);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < Ci; ++c)
        fill_phases(kernels, x + (n * Ci + c) * g.H * g.W, g, planes.data() + c * g.per_channel());
      for (int64_t p = 0; p < Pq; p += chunk) {
        const int64_t width = std::min(chunk, Pq - p);
        for (int64_t c = 0, row = 0; c < Ci; ++c)
          for (int64_t ky = 0; ky < k; ++ky)
            for (int64_t kx = 0; kx < k; ++kx, ++row)
              kernels.pack_row(planes.data() + g.row_offset(c, ky, kx) + p, row, K, width, false, packed.data());
        kernels.matmul_packed(w, K, packed.data(), out.data() + p, Pq, Co, K, width);  // w: (C_out, C_in k k)
      }
      // Drop the padding columns; sum each plane while it is in cache.
      T* yn = y + n * Co * Po;
      for (int64_t c = 0; c < Co; ++c) {
        for (int64_t r = 0; r < g.Ho; ++r)
          std::copy_n(out.data() + c * Pq + r * g.Wq, g.Wo, yn + c * Po + r * g.Wo);
        kernels.sums(yn + c * Po, nullptr, Po, &s1[n * Co + c], &s2[n * Co + c]);
      }
    }
  });
}

}  // namespace

at::Tensor relu_conv_bn_forward(const at::Tensor& x_in, const at::Tensor& w_in, int64_t stride,
                                at::IntArrayRef groups, double eps) {
  const char* op = "cpu_relu_conv_bn_forward";
  check_planes(x_in, op);
  const int64_t N = x_in.size(0), Ci = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(w_in.dim() == 4 && w_in.size(1) == Ci && w_in.size(2) == w_in.size(3), op,
              ": weight must be (C_out, ", Ci, ", k, k), got ", w_in.sizes());
  TORCH_CHECK(w_in.scalar_type() == x_in.scalar_type(), op, ": weight dtype ", w_in.scalar_type(),
              " differs from the input's ", x_in.scalar_type());
  check_window(w_in.size(2), stride, 1, op);
  const std::vector<int64_t> starts = group_starts(groups, N, op);
  const int64_t G = int64_t(starts.size()) - 1;
  const PhasePlanes g(H, W, w_in.size(2), stride);
  const int64_t Co = w_in.size(0), Po = g.Ho * g.Wo;
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  at::Tensor y = at::empty({N, Co, g.Ho, g.Wo}, x.options());
  // (natfast/ops/backends/cpu.py, _supports_relu_conv_bn, sends this case here at any width: keep
  // the two conditions the same.)
  const bool winograd = g.k == 3 && stride == 1 && H % 2 == 0 && W % 2 == 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_relu_conv_bn_forward", [&] {
    const auto& kernels = plane_kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<double> s1(N * Co), s2(N * Co);
    if (winograd)
      winograd_conv(kernels, xp, wp, yp, N, Ci, Co, H, W, true, s1.data(), s2.data());
    else
      direct_conv(kernels, xp, wp, yp, N, Ci, Co, g, s1, s2);
    std::vector<double> mean(G * Co), rstd(G * Co);
    normalize_planes(kernels, yp, yp, s1, s2, starts, Co, Po, eps, mean.data(), rstd.data());
  });
  return y;
}

at::Tensor conv3x3_winograd(const at::Tensor& x_in, const at::Tensor& w_in, bool relu_input) {
  const char* op = "cpu_conv3x3_winograd";
  check_planes(x_in, op);
  const int64_t N = x_in.size(0), Ci = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(w_in.dim() == 4 && w_in.size(1) == Ci && w_in.size(2) == 3 && w_in.size(3) == 3, op,
              ": weight must be (C_out, ", Ci, ", 3, 3), got ", w_in.sizes());
  TORCH_CHECK(w_in.scalar_type() == x_in.scalar_type(), op, ": weight dtype ", w_in.scalar_type(),
              " differs from the input's ", x_in.scalar_type());
  TORCH_CHECK(H % 2 == 0 && W % 2 == 0, op, ": height and width must be even (2 x 2 output tiles), got ", H,
              " x ", W);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  at::Tensor y = at::empty({N, w.size(0), H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_conv3x3_winograd", [&] {
    winograd_conv(plane_kernels<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                  N, Ci, w.size(0), H, W, relu_input, nullptr, nullptr);
  });
  return y;
}

}  // namespace cpu
}  // namespace natfast

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // y = conv2d(relu(x) if relu_input else x, weight, stride 1, padding 1), weight (C_out, C_in, 3, 3),
  // H and W even: the training path's conv_3x3 forward, and its input gradient (the same
  // convolution of the output gradient, the weight flipped and transposed, relu_input false).
  m.def("cpu_conv3x3_winograd(Tensor x, Tensor weight, bool relu_input) -> Tensor");
  // y = BN(conv2d(relu(x), weight, stride, padding k / 2)), forward only; weight (C_out, C_in, k, k),
  // k odd; BN without affine parameters, batch statistics per group of consecutive samples (groups:
  // sizes adding up to N; empty: one group).
  m.def("cpu_relu_conv_bn_forward(Tensor x, Tensor weight, int stride, int[] groups, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(natfast, CPU, m) {
  m.impl("cpu_relu_conv_bn_forward", &natfast::cpu::relu_conv_bn_forward);
  m.impl("cpu_conv3x3_winograd", &natfast::cpu::conv3x3_winograd);
}
