#pragma once
// The plane kernels, written once against a vector type V (simd.h) and compiled once per
// instruction set: kernels_avx2.cpp (V = VecAvx2f), kernels_vec128.cpp (V = Vec128f) and
// kernels_portable.cpp (V = VecScalar<T>).
// Internal linkage throughout (see simd.h). Buffer layout and invariants: plane_kernels.h.
#include <cstring>

#include "cpu/plane_kernels.h"
#include "cpu/simd.h"

namespace natfast {
namespace cpu {
namespace {

constexpr int64_t kMaxTaps = kMaxKernel * kMaxKernel;

// Where each window tap lies in a padded buffer split into `phases` column phases, relative to
// the tap (0, 0) of the window at output (oy, ox), which is element oy * phases * rs + ox.
struct Taps {
  int64_t n;
  int64_t off[kMaxTaps];
};

Taps window_taps(const PlaneGeometry& g, int64_t phases) {
  // phases is 1 or 2: shifts and masks instead of divisions (this runs once per plane).
  const int64_t shift = phases - 1, mask = phases - 1;
  Taps taps;
  taps.n = 0;
  for (int64_t ky = 0; ky < g.k; ++ky) {
    for (int64_t kx = 0; kx < g.k; ++kx) {
      const int64_t col = kx * g.dilation;
      taps.off[taps.n++] = (col & mask) * g.phase + ky * g.dilation * g.rs + (col >> shift);
    }
  }
  return taps;
}

// Scalar ReLU that keeps NaN (like max(0, x) in the vector code); compiles to a branch-free max.
template <typename T>
T relu(T x) {
  return x < T(0) ? T(0) : x;
}

#if defined(__GNUC__) || defined(__clang__)
#define NATFAST_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define NATFAST_ALWAYS_INLINE inline
#endif

// Stores the first n (<= width) lanes of v.
template <class V>
NATFAST_ALWAYS_INLINE void store_part(V v, typename V::Scalar* dst, int64_t n) {
  if (n >= V::width) {
    v.store(dst);
    return;
  }
  typename V::Scalar tmp[V::width];
  v.store(tmp);
  std::memcpy(dst, tmp, n * sizeof(tmp[0]));
}

// Copies a rows x cols plane into a padded buffer at (row0, col0), optionally through ReLU.
template <class V, bool kRelu>
void copy_into(const typename V::Scalar* src, int64_t rows, int64_t cols, typename V::Scalar* dst, int64_t row0,
               int64_t col0, int64_t phases, const PlaneGeometry& g) {
  using T = typename V::Scalar;
  if (phases == 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = src + r * cols;
      T* d = dst + (row0 + r) * g.rs + col0;
      int64_t c = 0;
      for (; c + V::width <= cols; c += V::width) {
        V v = V::load(s + c);
        (kRelu ? V::max(V::zero(), v) : v).store(d + c);
      }
      for (; c < cols; ++c) d[c] = kRelu ? relu(s[c]) : s[c];
    }
    return;
  }
  // Two phases: source column c lands in phase (col0 + c) % 2 at index (col0 + c) / 2, so even
  // and odd source columns each fill one phase contiguously.
  const int64_t even_phase = col0 % 2, even_at = col0 / 2, odd_at = (col0 + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * cols;
    T* even = dst + even_phase * g.phase + (row0 + r) * g.rs + even_at;
    T* odd = dst + (1 - even_phase) * g.phase + (row0 + r) * g.rs + odd_at;
    int64_t c = 0;
    for (; c + 2 * V::width <= cols; c += 2 * V::width) {
      V e, o;
      V::deinterleave(V::load(s + c), V::load(s + c + V::width), &e, &o);
      (kRelu ? V::max(V::zero(), e) : e).store(even + c / 2);
      (kRelu ? V::max(V::zero(), o) : o).store(odd + c / 2);
    }
    // Tails: one loop per phase keeps them branch-free. c is even here.
    for (int64_t e = c; e < cols; e += 2) even[e / 2] = kRelu ? relu(s[e]) : s[e];
    for (int64_t o = c + 1; o < cols; o += 2) odd[o / 2] = kRelu ? relu(s[o]) : s[o];
  }
}

// Output vectors are computed kGroup at a time: independent accumulator chains hide the FMA latency
// (one chain per vector would wait on it at every tap).
constexpr int kGroup = 4;

// Calls body(oy, ox, count) for the vector positions (oy, ox), ox in steps of V::width below cols,
// in row-major groups of kGroup; positions past the last are repeats of it (count says how many
// are real), so that the body can run a fixed-size loop.
template <class V, class Body>
void for_vector_groups(int64_t rows, int64_t cols, const Body& body) {
  int64_t oy[kGroup], ox[kGroup];
  int64_t y = 0, x = 0;
  while (y < rows) {
    int count = 0;
    for (; count < kGroup && y < rows; ++count) {
      oy[count] = y;
      ox[count] = x;
      x += V::width;
      if (x >= cols) {
        x = 0;
        ++y;
      }
    }
    for (int b = count; b < kGroup; ++b) {
      oy[b] = oy[count - 1];
      ox[b] = ox[count - 1];
    }
    body(oy, ox, count);
  }
}

// One output vector of correlate: v times scale (rows x Wo_pad) where given, masked to where
// mask_x > 0 (the ReLU gradient) where given, stored at (oy, ox) of dst (rows x cols). Inlined: as
// a call it cost ~10% of a 3x3 depthwise pass (once per 9 FMAs per output vector).
template <class V>
NATFAST_ALWAYS_INLINE void store_output(V v, int64_t oy, int64_t ox, int64_t cols, int64_t scale_rs, const typename V::Scalar* scale,
                  const typename V::Scalar* mask_x, typename V::Scalar* dst) {
  using T = typename V::Scalar;
  if (scale != nullptr) v = V::mul(v, V::load(scale + oy * scale_rs + ox));
  const int64_t n = cols - ox;
  if (mask_x != nullptr) {
    const T* m = mask_x + oy * cols + ox;
    if (n >= V::width) {
      v = V::masked(V::gt(V::load(m), V::zero()), v);
    } else {
      T tmp[V::width] = {};
      std::memcpy(tmp, m, n * sizeof(T));
      v = V::masked(V::gt(V::load(tmp), V::zero()), v);
    }
  }
  store_part(v, dst + oy * cols + ox, n);
}

// Stride-1 correlate of a K x K window with dilation D over kRowBlock output rows at a time: an
// input row vector is loaded once for every output row it reaches (up to K), with the K weights of
// one window column held in registers: 0.4-0.5 loads per FMA against the one-output-at-a-time
// loop's 1.25 (1.3-1.5x on a 32 x 32 plane on a Zen 1 core; bench/RESULTS.md). Sums each output's
// taps column by column (kx outer).
constexpr int64_t kRowBlock = 8;

#if defined(__clang__)
#define NATFAST_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NATFAST_UNROLL _Pragma("GCC unroll 32")
#else
#define NATFAST_UNROLL
#endif

template <class V, int K, int D>
void correlate_row_block(const typename V::Scalar* src, const PlaneGeometry& g, const typename V::Scalar* w,
                         int64_t oy0, int64_t cols, const typename V::Scalar* scale,
                         const typename V::Scalar* mask_x, typename V::Scalar* dst) {
  using T = typename V::Scalar;
  constexpr int kInputs = int(kRowBlock) + (K - 1) * D;
  for (int64_t ox = 0; ox < cols; ox += V::width) {
    // (Fully unrolled, so that the accumulators stay in registers: 8 + K + 1 of AVX2's 16.)
    V acc[kRowBlock];
    NATFAST_UNROLL
    for (int r = 0; r < kRowBlock; ++r) acc[r] = V::zero();
    const T* base = src + oy0 * g.rs + ox;
    for (int kx = 0; kx < K; ++kx) {
      V wk[K];
      NATFAST_UNROLL
      for (int ky = 0; ky < K; ++ky) wk[ky] = V::set1(w[ky * K + kx]);
      NATFAST_UNROLL
      for (int j = 0; j < kInputs; ++j) {
        const V v = V::load(base + j * g.rs + kx * D);
        NATFAST_UNROLL
        for (int ky = 0; ky < K; ++ky) {
          const int r = j - ky * D;
          if (r >= 0 && r < kRowBlock) acc[r] = V::fmadd(wk[ky], v, acc[r]);
        }
      }
    }
    NATFAST_UNROLL
    for (int r = 0; r < kRowBlock; ++r) store_output<V>(acc[r], oy0 + r, ox, cols, g.Wo_pad, scale, mask_x, dst);
  }
}

template <class V>
void correlate_generic(const typename V::Scalar* src, const PlaneGeometry& g, int64_t stride, const Taps& taps,
                       const typename V::Scalar* w, int64_t rows, int64_t cols, const typename V::Scalar* scale,
                       const typename V::Scalar* mask_x, typename V::Scalar* dst);

// dst (rows x cols) = sum over taps of w[t] * src at the tap, optionally times scale
// (rows x Wo_pad) and masked to where mask_x > 0 (the ReLU gradient).
template <class V>
void correlate(const typename V::Scalar* src, const PlaneGeometry& g, int64_t stride, const Taps& taps,
               const typename V::Scalar* w, int64_t rows, int64_t cols, const typename V::Scalar* scale,
               const typename V::Scalar* mask_x, typename V::Scalar* dst) {
  using Block = void (*)(const typename V::Scalar*, const PlaneGeometry&, const typename V::Scalar*, int64_t, int64_t,
                         const typename V::Scalar*, const typename V::Scalar*, typename V::Scalar*);
  Block block = nullptr;
  if (stride == 1 && V::width > 1) {  // (the portable build keeps the plain loop)
    if (g.k == 3 && g.dilation == 1) block = &correlate_row_block<V, 3, 1>;
    if (g.k == 3 && g.dilation == 2) block = &correlate_row_block<V, 3, 2>;
    if (g.k == 5 && g.dilation == 1) block = &correlate_row_block<V, 5, 1>;
    if (g.k == 5 && g.dilation == 2) block = &correlate_row_block<V, 5, 2>;
  }
  int64_t oy = 0;
  if (block != nullptr)
    for (; oy + kRowBlock <= rows; oy += kRowBlock) block(src, g, w, oy, cols, scale, mask_x, dst);
  if (oy < rows)  // the last rows (fewer than a block), or every row where no block kernel fits
    correlate_generic<V>(src + oy * stride * g.rs, g, stride, taps, w, rows - oy, cols,
                         scale == nullptr ? nullptr : scale + oy * g.Wo_pad,
                         mask_x == nullptr ? nullptr : mask_x + oy * cols, dst + oy * cols);
}

// One output vector at a time (kGroup of them interleaved), any stride.
template <class V>
void correlate_generic(const typename V::Scalar* src, const PlaneGeometry& g, int64_t stride, const Taps& taps,
               const typename V::Scalar* w, int64_t rows, int64_t cols, const typename V::Scalar* scale,
               const typename V::Scalar* mask_x, typename V::Scalar* dst) {
  using T = typename V::Scalar;
  V wv[kMaxTaps];
  for (int64_t t = 0; t < taps.n; ++t) wv[t] = V::set1(w[t]);
  for_vector_groups<V>(rows, cols, [&](const int64_t* oy, const int64_t* ox, int count) {
    const T* at[kGroup];
    V acc[kGroup];
    for (int b = 0; b < kGroup; ++b) {
      at[b] = src + oy[b] * stride * g.rs + ox[b];
      acc[b] = V::zero();
    }
    for (int64_t t = 0; t < taps.n; ++t) {
      for (int b = 0; b < kGroup; ++b) acc[b] = V::fmadd(wv[t], V::load(at[b] + taps.off[t]), acc[b]);
    }
    for (int b = 0; b < count; ++b) store_output<V>(acc[b], oy[b], ox[b], cols, g.Wo_pad, scale, mask_x, dst);
  });
}

// dw[t] = sum over outputs of G * P at tap t (G: Ho rows of stride rs, zero past Wo). One
// accumulator per tap: independent chains.
template <class V>
void weight_grad(const typename V::Scalar* P, const typename V::Scalar* G, const PlaneGeometry& g, const Taps& taps,
                 typename V::Scalar* dw) {
  V acc[kMaxTaps];
  for (int64_t t = 0; t < taps.n; ++t) acc[t] = V::zero();
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const typename V::Scalar* prow = P + oy * g.stride * g.rs;
    const typename V::Scalar* grow = G + oy * g.rs;
    for (int64_t ox = 0; ox < g.Wo_pad; ox += V::width) {
      const V gv = V::load(grow + ox);
      for (int64_t t = 0; t < taps.n; ++t) acc[t] = V::fmadd(gv, V::load(prow + taps.off[t] + ox), acc[t]);
    }
  }
  for (int64_t t = 0; t < taps.n; ++t) dw[t] = V::hsum(acc[t]);
}

// The maximum of each window of P (outputs oy, ox .. ox + width).
template <class V>
V window_max(const typename V::Scalar* row, const Taps& taps, int64_t ox) {
  V m = V::set1(typename V::Scalar(-__builtin_inf()));
  for (int64_t t = 0; t < taps.n; ++t) m = V::max(V::load(row + taps.off[t] + ox), m);
  return m;
}

// Stride-2 transposed window sum, as a gather: gx[iy][ix] = the sum over the outputs (oy, ox) and taps
// t with 2 oy + ky d = iy + p and 2 ox + kx d = ix + p of w[t] G[oy][ox] or, given a winner map A,
// of G[oy][ox] where A[oy][ox] == t + 1. Which taps reach a pixel depends only on the parities of
// its row and column, and within one parity class the reads are contiguous: even and odd columns
// are summed as two vectors and interleaved. G and A: padded like P (one phase), origin (p, p),
// zero outside the outputs. Optionally masked to where mask_x > 0.
template <class V>
void gather_stride2(const typename V::Scalar* G, const typename V::Scalar* A, const typename V::Scalar* w,
                    const PlaneGeometry& g, const typename V::Scalar* mask_x, typename V::Scalar* gx) {
  using T = typename V::Scalar;
  struct TapList {
    int64_t n;
    int64_t off[kMaxTaps];  // relative to the G element of output (floor((iy + p) / 2), m)
    V weight[kMaxTaps];
    V id[kMaxTaps];         // t + 1, to compare with A
  };
  const int64_t p = g.pad, d = g.dilation;
  TapList lists[2][2];      // [parity of iy + p][parity of ix]
  for (int64_t rp = 0; rp < 2; ++rp) {
    for (int64_t par = 0; par < 2; ++par) {
      TapList& list = lists[rp][par];
      list.n = 0;
      for (int64_t ky = 0; ky < g.k; ++ky) {
        if ((ky * d) % 2 != rp) continue;
        for (int64_t kx = 0; kx < g.k; ++kx) {
          if ((kx * d) % 2 != (p + par) % 2) continue;
          list.off[list.n] = -((ky * d - rp) / 2) * g.rs + (par + p - kx * d) / 2;
          list.weight[list.n] = V::set1(w == nullptr ? T(1) : w[ky * g.k + kx]);
          list.id[list.n] = V::set1(T(ky * g.k + kx + 1));
          ++list.n;
        }
      }
    }
  }
  const int64_t origin = p * g.rs + p;
  auto sum = [&](const TapList& list, int64_t at) {
    V acc = V::zero();
    for (int64_t i = 0; i < list.n; ++i) {
      const V gv = V::load(G + at + list.off[i]);
      acc = A == nullptr ? V::fmadd(list.weight[i], gv, acc)
                         : V::add(acc, V::masked(V::eq(V::load(A + at + list.off[i]), list.id[i]), gv));
    }
    return acc;
  };
  for (int64_t iy = 0; iy < g.H; ++iy) {
    const int64_t r = iy + p, rp = r & 1;
    const int64_t row = origin + (r - rp) / 2 * g.rs;
    const T* m = mask_x == nullptr ? nullptr : mask_x + iy * g.W;
    T* dst_row = gx + iy * g.W;
    for (int64_t c = 0; c < g.W; c += 2 * V::width) {
      V a, b;
      V::interleave(sum(lists[rp][0], row + c / 2), sum(lists[rp][1], row + c / 2), &a, &b);
      // Whole-vector stores into gx; the row's last part goes through a small buffer.
      const int64_t n = g.W - c;
      T part[2 * V::width];
      T* dst = n >= 2 * V::width ? dst_row + c : part;
      if (m != nullptr) {
        const T* mc = m + c;
        T mask[2 * V::width] = {};
        if (n < 2 * V::width) {
          std::memcpy(mask, mc, n * sizeof(T));
          mc = mask;
        }
        a = V::masked(V::gt(V::load(mc), V::zero()), a);
        b = V::masked(V::gt(V::load(mc + V::width), V::zero()), b);
      }
      a.store(dst);
      b.store(dst + V::width);
      if (dst == part) std::memcpy(dst_row + c, part, n * sizeof(T));
    }
  }
}

// A (padded like G, origin (p, p)) = 1 + the tap of the first maximum, in row-major order, of
// each output's window of P; the border is left as it is (zero: matches no tap).
template <class V>
void winner_map(const typename V::Scalar* P, const PlaneGeometry& g, const Taps& taps, typename V::Scalar* A) {
  using T = typename V::Scalar;
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const T* row = P + oy * g.stride * g.rs;
    for (int64_t ox = 0; ox < g.Wo; ox += V::width) {
      const V m = window_max<V>(row, taps, ox);
      V first = V::zero();
      for (int64_t t = taps.n - 1; t >= 0; --t)
        first = V::select(V::eq(V::load(row + taps.off[t] + ox), m), V::set1(T(t + 1)), first);
      store_part(first, A + (g.pad + oy) * g.rs + g.pad + ox, g.Wo - ox);
    }
  }
}

template <class V>
void relu_dwconv_forward(const typename V::Scalar* x, const typename V::Scalar* w, typename V::Scalar* y,
                         const PlaneGeometry& g, typename V::Scalar* P) {
  copy_into<V, true>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  correlate<V>(P, g, g.stride, window_taps(g, g.stride), w, g.Ho, g.Wo, nullptr, nullptr, y);
}

template <class V>
void relu_dwconv_backward(const typename V::Scalar* gy, const typename V::Scalar* x, const typename V::Scalar* w,
                          typename V::Scalar* gx, typename V::Scalar* dw, const PlaneGeometry& g,
                          typename V::Scalar* P, typename V::Scalar* G) {
  using T = typename V::Scalar;
  const int64_t p = g.pad;
  copy_into<V, true>(x, g.H, g.W, P, p, p, g.stride, g);
  copy_into<V, false>(gy, g.Ho, g.Wo, G, p, p, 1, g);
  const Taps taps = window_taps(g, g.stride);
  weight_grad<V>(P, G + p * g.rs + p, g, taps, dw);
  if (g.stride == 2) {
    gather_stride2<V>(G, nullptr, w, g, x, gx);
    return;
  }
  // Stride 1: the forward correlation of the padded gy with the flipped window.
  T flipped[kMaxTaps];
  for (int64_t t = 0; t < taps.n; ++t) flipped[t] = w[taps.n - 1 - t];
  correlate<V>(G, g, 1, taps, flipped, g.H, g.W, nullptr, x, gx);
}

template <class V>
void max_pool_forward(const typename V::Scalar* x, typename V::Scalar* y, const PlaneGeometry& g,
                      typename V::Scalar* P) {
  copy_into<V, false>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  const Taps taps = window_taps(g, g.stride);
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const typename V::Scalar* row = P + oy * g.stride * g.rs;
    for (int64_t ox = 0; ox < g.Wo; ox += V::width) store_part(window_max<V>(row, taps, ox), y + oy * g.Wo + ox, g.Wo - ox);
  }
}

// The gradient goes to the first maximum of each window in row-major order, as in PyTorch.
template <class V>
void max_pool_backward(const typename V::Scalar* gy, const typename V::Scalar* x, typename V::Scalar* gx,
                       const PlaneGeometry& g, typename V::Scalar* P, typename V::Scalar* G, typename V::Scalar* A) {
  using T = typename V::Scalar;
  copy_into<V, false>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  copy_into<V, false>(gy, g.Ho, g.Wo, G, g.pad, g.pad, 1, g);
  winner_map<V>(P, g, window_taps(g, g.stride), A);
  if (g.stride == 2) {
    gather_stride2<V>(G, A, nullptr, g, nullptr, gx);
    return;
  }
  // Stride 1: an input pixel collects the gradient of every window whose winner it is; seen from
  // the input, window tap t is flipped tap n - 1 - t.
  const Taps taps = window_taps(g, 1);
  for (int64_t iy = 0; iy < g.H; ++iy) {
    const T* a = A + iy * g.rs;
    const T* gr = G + iy * g.rs;
    for (int64_t ix = 0; ix < g.W; ix += V::width) {
      V acc = V::zero();
      for (int64_t t = 0; t < taps.n; ++t) {
        const typename V::Mask won = V::eq(V::load(a + taps.off[t] + ix), V::set1(T(taps.n - t)));
        acc = V::add(acc, V::masked(won, V::load(gr + taps.off[t] + ix)));
      }
      store_part(acc, gx + iy * g.W + ix, g.W - ix);
    }
  }
}

template <class V>
void avg_pool_forward(const typename V::Scalar* x, typename V::Scalar* y, const typename V::Scalar* inv_count,
                      const PlaneGeometry& g, typename V::Scalar* P) {
  using T = typename V::Scalar;
  copy_into<V, false>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  T ones[kMaxTaps];
  for (T& one : ones) one = T(1);
  correlate<V>(P, g, g.stride, window_taps(g, g.stride), ones, g.Ho, g.Wo, inv_count, nullptr, y);
}

template <class V>
void avg_pool_backward(const typename V::Scalar* gy, typename V::Scalar* gx, const typename V::Scalar* inv_count,
                       const PlaneGeometry& g, typename V::Scalar* G) {
  using T = typename V::Scalar;
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const T* s = gy + oy * g.Wo;
    const T* inv = inv_count + oy * g.Wo_pad;
    T* d = G + (g.pad + oy) * g.rs + g.pad;
    int64_t ox = 0;
    for (; ox + V::width <= g.Wo; ox += V::width) V::mul(V::load(s + ox), V::load(inv + ox)).store(d + ox);
    for (; ox < g.Wo; ++ox) d[ox] = s[ox] * inv[ox];
  }
  if (g.stride == 2) {
    gather_stride2<V>(G, nullptr, nullptr, g, nullptr, gx);
    return;
  }
  T ones[kMaxTaps];
  for (T& one : ones) one = T(1);
  correlate<V>(G, g, 1, window_taps(g, 1), ones, g.H, g.W, nullptr, nullptr, gx);
}

// Four accumulators of each sum: one add (or FMA) chain would wait out the instruction's latency
// at every vector (3-5 cycles on the supernet's test CPUs), four keep the loads busy instead.
template <class V>
void sums(const typename V::Scalar* u, const typename V::Scalar* v, int64_t n, double* s1, double* s2) {
  constexpr int kChains = 4;
  V a[kChains], b[kChains];
  for (int j = 0; j < kChains; ++j) a[j] = b[j] = V::zero();
  int64_t i = 0;
  for (; i + kChains * V::width <= n; i += kChains * V::width)
    for (int j = 0; j < kChains; ++j) {
      const V x = V::load(u + i + j * V::width);
      a[j] = V::add(a[j], x);
      b[j] = V::fmadd(x, v == nullptr ? x : V::load(v + i + j * V::width), b[j]);
    }
  for (; i + V::width <= n; i += V::width) {
    const V x = V::load(u + i);
    a[0] = V::add(a[0], x);
    b[0] = V::fmadd(x, v == nullptr ? x : V::load(v + i), b[0]);
  }
  for (int j = 1; j < kChains; ++j) {
    a[0] = V::add(a[0], a[j]);
    b[0] = V::add(b[0], b[j]);
  }
  double sa = V::hsum(a[0]), sb = V::hsum(b[0]);
  for (; i < n; ++i) {
    sa += u[i];
    sb += double(u[i]) * (v == nullptr ? u[i] : v[i]);
  }
  *s1 = sa;
  *s2 = sb;
}

template <class V>
void affine(const typename V::Scalar* u, typename V::Scalar a, const typename V::Scalar* v, typename V::Scalar b,
            typename V::Scalar c, typename V::Scalar* out, int64_t n) {
  const V av = V::set1(a), bv = V::set1(b), cv = V::set1(c);
  int64_t i = 0;
  if (v == nullptr) {
    for (; i + V::width <= n; i += V::width) V::fmadd(av, V::load(u + i), cv).store(out + i);
    for (; i < n; ++i) out[i] = a * u[i] + c;
    return;
  }
  for (; i + V::width <= n; i += V::width)
    V::fmadd(av, V::load(u + i), V::fmadd(bv, V::load(v + i), cv)).store(out + i);
  for (; i < n; ++i) out[i] = a * u[i] + b * v[i] + c;
}

template <class V>
void relu(const typename V::Scalar* x, typename V::Scalar* out, int64_t n) {
  using T = typename V::Scalar;
  const V zero = V::zero();
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) {
    const V v = V::load(x + i);
    V::masked(V::gt(v, zero), v).store(out + i);
  }
  for (; i < n; ++i) out[i] = x[i] > T(0) ? x[i] : T(0);
}

// out[i] = x[2 i] (through the ReLU when relu is on) for i < n, reading x[0 .. 2 n - 1]: a row of
// a stride-2 view (FactorizedReduce's pixel subsamples) gathered with whole vectors, two loads and
// a deinterleave per vector of output instead of one scalar load per value.
template <class V>
void pick_even(const typename V::Scalar* x, typename V::Scalar* out, int64_t n, bool relu) {
  using T = typename V::Scalar;
  const V zero = V::zero();
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) {
    V even, odd;
    V::deinterleave(V::load(x + 2 * i), V::load(x + 2 * i + V::width), &even, &odd);
    (relu ? V::masked(V::gt(even, zero), even) : even).store(out + i);
  }
  for (; i < n; ++i) out[i] = !relu || x[2 * i] > T(0) ? x[2 * i] : T(0);
}

template <class V>
void relu_mask(const typename V::Scalar* x, typename V::Scalar* g, int64_t n) {
  using T = typename V::Scalar;
  const V zero = V::zero();
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) V::masked(V::gt(V::load(x + i), zero), V::load(g + i)).store(g + i);
  for (; i < n; ++i) g[i] = x[i] > T(0) ? g[i] : T(0);
}

// ---------------------------------------------------------------- 1x1 convolution GEMM
// (Where it beats the BLAS, and where there is none: see csrc/cpu/gemm.h.) C's columns go NV
// vectors at a time: their K rows of B (a whole row of pixels apart, which would share L1 sets) are
// first packed into one contiguous panel; register blocks of R rows of C then run over the panel,
// K innermost, reading it from L1.
template <class V, int R, int NV>
inline void matmul_block(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* panel, bool accumulate,
                         typename V::Scalar* C, int64_t ldc, int64_t K) {
  static_assert(NV * V::width <= kMatmulPanelVectors * kMaxVector, "a panel holds at most 3 vectors of columns");
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = V::zero();
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int j = 0; j < NV; ++j) b[j] = V::load(panel + (k * NV + j) * V::width);
    for (int r = 0; r < R; ++r) {
      const V a = V::set1(A[r * lda + k]);
      for (int j = 0; j < NV; ++j) acc[r][j] = V::fmadd(a, b[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) {
      typename V::Scalar* c = C + r * ldc + j * V::width;
      (accumulate ? V::add(V::load(c), acc[r][j]) : acc[r][j]).store(c);
    }
}

// Rows of C go in blocks of at most `max_rows`, spread evenly over the fewest blocks: 20 rows as
// 4+4+4+4+4 or 5+5+5+5, not 6+6+6+2, whose 2-row block loads as much as it computes (the
// supernet's first stage has 20 channels).
inline int64_t row_blocks(int64_t M, int64_t max_rows) { return (M + max_rows - 1) / max_rows; }
inline int64_t block_rows(int64_t M, int64_t blocks, int64_t b) { return M / blocks + (b < M % blocks ? 1 : 0); }

// One block of `rows` rows (at most MaxRows) of C and A over the packed panel.
template <class V, int NV, int MaxRows>
inline void matmul_rows(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* panel, bool accumulate,
                        typename V::Scalar* C, int64_t ldc, int64_t rows, int64_t K) {
  static_assert(MaxRows <= 6, "at most 6 rows a block");
  switch (rows) {
    case 6: matmul_block<V, (MaxRows >= 6 ? 6 : 1), NV>(A, lda, panel, accumulate, C, ldc, K); break;
    case 5: matmul_block<V, (MaxRows >= 5 ? 5 : 1), NV>(A, lda, panel, accumulate, C, ldc, K); break;
    case 4: matmul_block<V, 4, NV>(A, lda, panel, accumulate, C, ldc, K); break;
    case 3: matmul_block<V, 3, NV>(A, lda, panel, accumulate, C, ldc, K); break;
    case 2: matmul_block<V, 2, NV>(A, lda, panel, accumulate, C, ldc, K); break;
    default: matmul_block<V, 1, NV>(A, lda, panel, accumulate, C, ldc, K); break;
  }
}

// Every row of C and A, in blocks of at most MaxRows rows, over one panel of NV vectors of columns.
template <class V, int NV, int MaxRows>
inline void matmul_panel(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* panel, bool accumulate,
                         typename V::Scalar* C, int64_t ldc, int64_t M, int64_t K) {
  const int64_t blocks = row_blocks(M, MaxRows);
  for (int64_t b = 0, i = 0; b < blocks; ++b) {
    const int64_t rows = block_rows(M, blocks, b);
    matmul_rows<V, NV, MaxRows>(A + i * lda, lda, panel, accumulate, C + i * ldc, ldc, rows, K);
    i += rows;
  }
}

template <class V, int NV>
inline void pack_panel(const typename V::Scalar* B, int64_t ldb, bool b_transposed, int64_t K,
                       typename V::Scalar* panel) {
  if (b_transposed) {  // column j of B is row j of the given (columns x K) matrix
    for (int64_t j = 0; j < NV * V::width; ++j)
      for (int64_t k = 0; k < K; ++k) panel[k * NV * V::width + j] = B[j * ldb + k];
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < NV; ++j) V::load(B + k * ldb + j * V::width).store(panel + (k * NV + j) * V::width);
  }
}

// NV = 1 or 2 vectors of columns: up to 6 rows a block (6 x 2 accumulators + 2 B vectors + 1
// broadcast: 15 of AVX2's 16 registers), A read in place.
template <class V, int NV>
inline void matmul_columns(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* B, int64_t ldb,
                           bool b_transposed, bool accumulate, typename V::Scalar* C, int64_t ldc, int64_t M,
                           int64_t K, typename V::Scalar* panel) {
  pack_panel<V, NV>(B, ldb, b_transposed, K, panel);
  matmul_panel<V, NV, 6>(A, lda, panel, accumulate, C, ldc, M, K);
}

template <class V>
void matmul(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* B, int64_t ldb, bool b_transposed,
            bool accumulate, typename V::Scalar* C, int64_t ldc, int64_t M, int64_t K, int64_t P,
            typename V::Scalar* panel) {
  using T = typename V::Scalar;
  // Where column p of B starts, and the step from one k to the next.
  const int64_t col_step = b_transposed ? ldb : 1, k_step = b_transposed ? 1 : ldb;
  int64_t p = 0;
  if (V::width > 1) {
    // 3 vectors of columns by up to 4 rows: 12 accumulators + 3 B vectors + 1 broadcast, all 16
    // AVX2 registers. Each broadcast feeds 3 FMAs instead of 2.
    for (; p + 3 * V::width <= P; p += 3 * V::width) {
      pack_panel<V, 3>(B + p * col_step, ldb, b_transposed, K, panel);
      matmul_panel<V, 3, 4>(A, lda, panel, accumulate, C + p, ldc, M, K);
    }
  }
  for (; p + 2 * V::width <= P; p += 2 * V::width)
    matmul_columns<V, 2>(A, lda, B + p * col_step, ldb, b_transposed, accumulate, C + p, ldc, M, K, panel);
  for (; p + V::width <= P; p += V::width)
    matmul_columns<V, 1>(A, lda, B + p * col_step, ldb, b_transposed, accumulate, C + p, ldc, M, K, panel);
  for (; p < P; ++p)  // the last columns, fewer than a vector
    for (int64_t i = 0; i < M; ++i) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k) s += A[i * lda + k] * B[p * col_step + k * k_step];
      C[i * ldc + p] = accumulate ? C[i * ldc + p] + s : s;
    }
}

// The same GEMM with B given already packed (plane_kernels.h: "B packed ahead"): a caller that
// copies B anyway (the 1x1 convolutions' gather and ReLU) writes the panels itself, and they are
// packed once for every weight. Same register blocks (and each output summed over k in order), so
// the same results as matmul.
template <class V>
void pack_row(const typename V::Scalar* src, int64_t k, int64_t K, int64_t P, bool relu, typename V::Scalar* packed) {
  using T = typename V::Scalar;
  constexpr int64_t w = V::width;
  const V zero = V::zero();
  int64_t p = 0;
  T* segment = packed;
  auto put = [&](const T* from, T* to, int64_t vectors) {
    for (int64_t j = 0; j < vectors; ++j) {
      const V v = V::load(from + j * w);
      (relu ? V::masked(V::gt(v, zero), v) : v).store(to + j * w);
    }
  };
  for (; p + 3 * w <= P; p += 3 * w, segment += K * 3 * w) put(src + p, segment + k * 3 * w, 3);
  for (int64_t vectors = 2; vectors >= 1; --vectors)
    if (p + vectors * w <= P) {
      put(src + p, segment + k * vectors * w, vectors);
      p += vectors * w;
      segment += K * vectors * w;
    }
  const int64_t rest = P - p;
  for (int64_t c = 0; c < rest; ++c) segment[k * rest + c] = !relu || src[p + c] > T(0) ? src[p + c] : T(0);
}

template <class V>
void matmul_packed(const typename V::Scalar* A, int64_t lda, const typename V::Scalar* packed, typename V::Scalar* C,
                   int64_t ldc, int64_t M, int64_t K, int64_t P) {
  using T = typename V::Scalar;
  constexpr int64_t w = V::width;
  int64_t p = 0;
  const T* segment = packed;
  for (; p + 3 * w <= P; p += 3 * w, segment += K * 3 * w)
    matmul_panel<V, 3, 4>(A, lda, segment, false, C + p, ldc, M, K);
  if (p + 2 * w <= P) {
    matmul_panel<V, 2, 6>(A, lda, segment, false, C + p, ldc, M, K);
    p += 2 * w;
    segment += K * 2 * w;
  }
  if (p + w <= P) {
    matmul_panel<V, 1, 6>(A, lda, segment, false, C + p, ldc, M, K);
    p += w;
    segment += K * w;
  }
  const int64_t rest = P - p;
  for (int64_t c = 0; c < rest; ++c)
    for (int64_t i = 0; i < M; ++i) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k) s += A[i * lda + k] * segment[k * rest + c];
      C[i * ldc + p + c] = s;
    }
}

// ---------------------------------------------------------------- Winograd F(2x2, 3x3)
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] and A^T = [1 1 1 0; 0 1 -1 -1], applied to the
// rows, then the columns, of `width` tiles at once (one per lane).
template <class V>
inline void winograd_input_tiles(const typename V::Scalar* even, const typename V::Scalar* odd, int64_t rs,
                                 typename V::Scalar* out, int64_t vs) {
  V d[4][4], t[4][4];
  for (int i = 0; i < 4; ++i) {
    d[i][0] = V::load(even + i * rs);
    d[i][1] = V::load(odd + i * rs);
    d[i][2] = V::load(even + i * rs + 1);
    d[i][3] = V::load(odd + i * rs + 1);
  }
  for (int j = 0; j < 4; ++j) {
    t[0][j] = V::sub(d[0][j], d[2][j]);
    t[1][j] = V::add(d[1][j], d[2][j]);
    t[2][j] = V::sub(d[2][j], d[1][j]);
    t[3][j] = V::sub(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    V::sub(t[i][0], t[i][2]).store(out + (4 * i + 0) * vs);
    V::add(t[i][1], t[i][2]).store(out + (4 * i + 1) * vs);
    V::sub(t[i][2], t[i][1]).store(out + (4 * i + 2) * vs);
    V::sub(t[i][1], t[i][3]).store(out + (4 * i + 3) * vs);
  }
}

template <class V>
void winograd_input(const typename V::Scalar* even, const typename V::Scalar* odd, int64_t rs,
                    typename V::Scalar* out, int64_t vs, int64_t tiles) {
  using T = typename V::Scalar;
  int64_t t = 0;
  for (; t + V::width <= tiles; t += V::width) winograd_input_tiles<V>(even + t, odd + t, rs, out + t, vs);
  for (; t < tiles; ++t) winograd_input_tiles<VecScalar<T>>(even + t, odd + t, rs, out + t, vs);
}

template <class V>
inline void winograd_output_tiles(const typename V::Scalar* M, int64_t vs, typename V::Scalar* y, int64_t ldy) {
  V s[2][4];
  for (int j = 0; j < 4; ++j) {
    const V m0 = V::load(M + j * vs), m1 = V::load(M + (4 + j) * vs), m2 = V::load(M + (8 + j) * vs),
            m3 = V::load(M + (12 + j) * vs);
    s[0][j] = V::add(V::add(m0, m1), m2);
    s[1][j] = V::sub(V::sub(m1, m2), m3);
  }
  for (int i = 0; i < 2; ++i) {
    const V left = V::add(V::add(s[i][0], s[i][1]), s[i][2]), right = V::sub(V::sub(s[i][1], s[i][2]), s[i][3]);
    V a, b;
    V::interleave(left, right, &a, &b);  // tile t's two columns side by side
    a.store(y + i * ldy);
    b.store(y + i * ldy + V::width);
  }
}

template <class V>
void winograd_output(const typename V::Scalar* M, int64_t vs, typename V::Scalar* y, int64_t ldy, int64_t tiles) {
  using T = typename V::Scalar;
  int64_t t = 0;
  for (; t + V::width <= tiles; t += V::width) winograd_output_tiles<V>(M + t, vs, y + 2 * t, ldy);
  for (; t < tiles; ++t) winograd_output_tiles<VecScalar<T>>(M + t, vs, y + 2 * t, ldy);
}

template <class V>
PlaneKernels<typename V::Scalar> make_table() {
  return {&relu_dwconv_forward<V>, &relu_dwconv_backward<V>, &max_pool_forward<V>, &max_pool_backward<V>,
          &avg_pool_forward<V>,    &avg_pool_backward<V>,    &sums<V>,             &affine<V>,
          &relu<V>,                &relu_mask<V>,            &pick_even<V>,        &matmul<V>,
          &pack_row<V>,            &matmul_packed<V>,        &winograd_input<V>,   &winograd_output<V>,
          V::width};
}

}  // namespace
}  // namespace cpu
}  // namespace natfast
