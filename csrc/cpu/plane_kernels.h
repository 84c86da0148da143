#pragma once
// Per-plane CPU kernels (one (sample, channel) plane of an NCHW tensor at a time) and the run-time
// choice between their AVX2/FMA build (kernels_avx2.cpp), their 128-bit build (kernels_vec128.cpp)
// and their portable build (kernels_portable.cpp). The operators (depthwise.cpp, pool.cpp,
// batch_norm.cpp) loop over planes with at::parallel_for and call these through a PlaneKernels table.
//
// Every window kernel works on a zero- (or -inf-) padded copy of the plane held in scratch buffers
// whose rows are long enough for whole vectors to run past the row end: no bounds checks inside
// the loops, and 'same' padding comes for free. With stride 2 a padded row is stored as two phase
// buffers (even and odd columns), so strided reads become contiguous ones.
#include <cstdint>

namespace natfast {
namespace cpu {

// Widest vector any build uses (AVX2: 8 floats); row padding is sized for it.
constexpr int64_t kMaxVector = 8;
// Largest window side the kernels accept (their per-tap tables are fixed-size).
constexpr int64_t kMaxKernel = 7;

// Geometry of one H x W plane under a k x k window with stride s, dilation d and 'same' padding
// p = d (k - 1) / 2, and of the scratch buffers the kernels use.
struct PlaneGeometry {
  int64_t H, W, k, stride, dilation, pad;
  int64_t Ho, Wo;    // output plane
  int64_t Wo_pad;    // Wo rounded up to kMaxVector
  int64_t Hp, rs;    // rows and row stride of a padded buffer (one phase)
  int64_t phase;     // elements of one phase buffer: Hp * rs
  int64_t scratch;   // elements of one scratch buffer: stride * phase
};

PlaneGeometry plane_geometry(int64_t H, int64_t W, int64_t k, int64_t stride, int64_t dilation);

// Scratch buffers, one set per thread, each `geometry.scratch` elements:
//   P: the padded input plane (`stride` phases). Its border must hold the pad value (0, or -inf
//      for max pooling) before the first call; calls only rewrite its interior.
//   G: the padded output gradient (one phase, outputs at (pad, pad)); A: the same for the max
//      pooling's winner map. Must be zero before the first call; calls only rewrite the outputs'
//      region, so the border stays zero.
// Scratch elements matmul needs for an inner dimension K: one packed panel of up to 3 vectors of
// columns.
constexpr int64_t kMatmulPanelVectors = 3;
constexpr int64_t matmul_panel_size(int64_t K) { return K * kMatmulPanelVectors * kMaxVector; }

template <typename T>
struct PlaneKernels {
  // y (Ho x Wo) = depthwise conv of relu(x) (H x W) with the k x k window w.
  void (*relu_dwconv_forward)(const T* x, const T* w, T* y, const PlaneGeometry& g, T* P);
  // gx (H x W) and this plane's share of the weight gradient, dw (k x k).
  void (*relu_dwconv_backward)(const T* gy, const T* x, const T* w, T* gx, T* dw, const PlaneGeometry& g,
                               T* P, T* G);
  void (*max_pool_forward)(const T* x, T* y, const PlaneGeometry& g, T* P);
  void (*max_pool_backward)(const T* gy, const T* x, T* gx, const PlaneGeometry& g, T* P, T* G, T* A);
  // inv_count: Ho x Wo_pad table of 1 / (number of non-padding window elements), zero in the tail.
  void (*avg_pool_forward)(const T* x, T* y, const T* inv_count, const PlaneGeometry& g, T* P);
  void (*avg_pool_backward)(const T* gy, T* gx, const T* inv_count, const PlaneGeometry& g, T* G);
  // s1 = sum u; s2 = sum u * v (v == nullptr: sum u * u). Accumulated in double.
  void (*sums)(const T* u, const T* v, int64_t n, double* s1, double* s2);
  // out = a u + b v + c (v == nullptr: out = a u + c).
  void (*affine)(const T* u, T a, const T* v, T b, T c, T* out, int64_t n);
  // out = max(x, 0) (NaN gives 0, as x > 0 ? x : 0).
  void (*relu)(const T* x, T* out, int64_t n);
  // g = g where x > 0, else 0, in place: a gradient through a ReLU of x.
  void (*relu_mask)(const T* x, T* g, int64_t n);
  // out[i] = x[2 i], or relu of it (NaN gives 0), for i < n; reads x[0 .. 2 n - 1], one past the
  // last value it uses.
  void (*pick_even)(const T* x, T* out, int64_t n, bool relu);
  // The GEMM of a 1x1 convolution on one sample (row-major, row strides lda, ldb, ldc):
  // C (M x P) = A (M x K) . B (C += that with accumulate), B being K x P, or P x K given
  // transposed (b_transposed). panel: scratch of matmul_panel_size(K) elements.
  void (*matmul)(const T* A, int64_t lda, const T* B, int64_t ldb, bool b_transposed, bool accumulate, T* C,
                 int64_t ldc, int64_t M, int64_t K, int64_t P, T* panel);
  // B packed ahead: the K x P matrix B as the panels matmul packs, one after another: for the
  // columns in blocks of 3 vectors, then one of 2 and one of 1 where they fit, then the last
  // (fewer than a vector's) columns, each block's K rows contiguous ([K][its width]).
  // pack_row writes row k of B (P values, through the ReLU when relu is on) into that layout
  // (K * P elements); matmul_packed is matmul (no accumulate) of a B so given.
  void (*pack_row)(const T* src, int64_t k, int64_t K, int64_t P, bool relu, T* packed);
  void (*matmul_packed)(const T* A, int64_t lda, const T* packed, T* C, int64_t ldc, int64_t M, int64_t K, int64_t P);
  // Winograd F(2x2, 3x3) (a stride-1 3x3 convolution as 16 GEMMs over 4x4 input tiles), one row
  // of `tiles` tiles of one channel at a time. Tile t reads padded rows 0-3 and padded columns
  // 2t .. 2t + 3 of a zero-padded plane given as its two column phases: row r of the even (odd)
  // padded columns starts at even + r * rs (odd + r * rs), so every read is a contiguous vector.
  // winograd_input writes tile t's 16 values B^T d B at V[xi * vs + t] (xi = 4 i + j);
  // winograd_output reads tile t's 16 GEMM results at M[xi * vs + t] and writes its 2 x 2 outputs
  // A^T m A to y[2 t], y[2 t + 1] and the same in the row below (y + ldy).
  void (*winograd_input)(const T* even, const T* odd, int64_t rs, T* V, int64_t vs, int64_t tiles);
  void (*winograd_output)(const T* M, int64_t vs, T* y, int64_t ldy, int64_t tiles);
  // Values per vector: 1 for the portable (scalar) kernels.
  int64_t vector_width;
};

namespace avx2 {
const PlaneKernels<float>& kernels_float();
}
namespace vec128 {
const PlaneKernels<float>& kernels_float();
}
namespace portable {
const PlaneKernels<float>& kernels_float();
const PlaneKernels<double>& kernels_double();
}  // namespace portable

// The table for this CPU (the best instruction set it has and NATFAST_CPU_CAPABILITY allows, see
// cpu_features.h).
template <typename T>
const PlaneKernels<T>& plane_kernels();
template <>
const PlaneKernels<float>& plane_kernels<float>();
template <>
const PlaneKernels<double>& plane_kernels<double>();

}  // namespace cpu
}  // namespace natfast
