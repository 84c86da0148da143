#pragma once
// The plane kernels, written once against a vector type V (simd.h) and compiled once per
// instruction set: kernels_avx2.cpp (V = VecAvx2f) and kernels_portable.cpp (V = VecScalar<T>).
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

// Branch-free scalar ReLU and ReLU-gradient mask: the sign of x is random, a branch mispredicts.
template <typename T>
T relu(T x) {
  return x < T(0) ? T(0) : x;
}
template <typename T>
T relu_mask(T x, T v) {
  return v * T(x > T(0));
}

// Stores the first n (<= width) lanes of v.
template <class V>
void store_part(V v, typename V::Scalar* dst, int64_t n) {
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
    for (; c < cols; ++c) (c % 2 ? odd : even)[c / 2] = kRelu ? relu(s[c]) : s[c];
  }
}

// dst (rows x cols) = sum over taps of w[t] * src at the tap, optionally times scale
// (rows x Wo_pad) and masked to where mask_x > 0 (the ReLU gradient).
template <class V>
void correlate(const typename V::Scalar* src, const PlaneGeometry& g, int64_t stride, const Taps& taps,
               const typename V::Scalar* w, int64_t rows, int64_t cols, const typename V::Scalar* scale,
               const typename V::Scalar* mask_x, typename V::Scalar* dst) {
  using T = typename V::Scalar;
  V wv[kMaxTaps];
  for (int64_t t = 0; t < taps.n; ++t) wv[t] = V::set1(w[t]);
  for (int64_t oy = 0; oy < rows; ++oy) {
    const T* row = src + oy * stride * g.rs;
    for (int64_t ox = 0; ox < cols; ox += V::width) {
      V acc = V::zero();
      for (int64_t t = 0; t < taps.n; ++t) acc = V::fmadd(wv[t], V::load(row + taps.off[t] + ox), acc);
      if (scale != nullptr) acc = V::mul(acc, V::load(scale + oy * g.Wo_pad + ox));
      const int64_t n = cols - ox;
      if (mask_x != nullptr) {
        const T* m = mask_x + oy * cols + ox;
        if (n >= V::width) {
          acc = V::masked(V::gt(V::load(m), V::zero()), acc);
        } else {
          T tmp[V::width] = {};
          std::memcpy(tmp, m, n * sizeof(T));
          acc = V::masked(V::gt(V::load(tmp), V::zero()), acc);
        }
      }
      store_part(acc, dst + oy * cols + ox, n);
    }
  }
}

// Q at each tap of each output's window += w[t] * G (G: Ho rows of stride rs, zero past Wo).
template <class V>
void scatter(const typename V::Scalar* G, const PlaneGeometry& g, const Taps& taps, const typename V::Scalar* w,
             typename V::Scalar* Q) {
  using T = typename V::Scalar;
  V wv[kMaxTaps];
  for (int64_t t = 0; t < taps.n; ++t) wv[t] = V::set1(w[t]);
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    T* base = Q + oy * g.stride * g.rs;
    for (int64_t ox = 0; ox < g.Wo_pad; ox += V::width) {
      const V gv = V::load(G + oy * g.rs + ox);
      for (int64_t t = 0; t < taps.n; ++t) {
        T* q = base + taps.off[t] + ox;
        V::fmadd(wv[t], gv, V::load(q)).store(q);
      }
    }
  }
}

// gx (H x W) = the interior of the padded, phase-split Q, masked to where mask_x > 0 if given.
template <class V>
void extract(const typename V::Scalar* Q, const PlaneGeometry& g, const typename V::Scalar* mask_x,
             typename V::Scalar* gx) {
  using T = typename V::Scalar;
  const int64_t p = g.pad;
  for (int64_t r = 0; r < g.H; ++r) {
    const T* q = Q + (r + p) * g.rs;
    const T* m = mask_x == nullptr ? nullptr : mask_x + r * g.W;
    T* d = gx + r * g.W;
    if (g.stride == 1) {
      int64_t c = 0;
      for (; c + V::width <= g.W; c += V::width) {
        V v = V::load(q + p + c);
        if (m != nullptr) v = V::masked(V::gt(V::load(m + c), V::zero()), v);
        v.store(d + c);
      }
      for (; c < g.W; ++c) d[c] = m == nullptr ? q[p + c] : relu_mask(m[c], q[p + c]);
      continue;
    }
    // Two phases (see copy_into): even columns from one phase, odd ones from the other.
    const T* even = q + (p % 2) * g.phase + p / 2;
    const T* odd = q + (1 - p % 2) * g.phase + (p + 1) / 2;
    int64_t c = 0;
    for (; c + 2 * V::width <= g.W; c += 2 * V::width) {
      V a, b;
      V::interleave(V::load(even + c / 2), V::load(odd + c / 2), &a, &b);
      if (m != nullptr) {
        a = V::masked(V::gt(V::load(m + c), V::zero()), a);
        b = V::masked(V::gt(V::load(m + c + V::width), V::zero()), b);
      }
      a.store(d + c);
      b.store(d + c + V::width);
    }
    for (; c < g.W; ++c) {
      const T v = (c % 2 ? odd : even)[c / 2];
      d[c] = m == nullptr ? v : relu_mask(m[c], v);
    }
  }
}

// dw[t] = sum over outputs of G * P at tap t (G: Ho rows of stride rs, zero past Wo).
template <class V>
void weight_grad(const typename V::Scalar* P, const typename V::Scalar* G, const PlaneGeometry& g, const Taps& taps,
                 typename V::Scalar* dw) {
  for (int64_t t = 0; t < taps.n; ++t) {
    V acc = V::zero();
    for (int64_t oy = 0; oy < g.Ho; ++oy) {
      const typename V::Scalar* prow = P + oy * g.stride * g.rs + taps.off[t];
      const typename V::Scalar* grow = G + oy * g.rs;
      for (int64_t ox = 0; ox < g.Wo_pad; ox += V::width) acc = V::fmadd(V::load(grow + ox), V::load(prow + ox), acc);
    }
    dw[t] = V::hsum(acc);
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
                          typename V::Scalar* P, typename V::Scalar* G, typename V::Scalar* Q) {
  using T = typename V::Scalar;
  const int64_t p = g.pad;
  copy_into<V, true>(x, g.H, g.W, P, p, p, g.stride, g);
  const Taps taps = window_taps(g, g.stride);
  if (g.stride == 1) {
    // Input gradient as a gather: the forward correlation of the padded gy with the flipped window.
    copy_into<V, false>(gy, g.Ho, g.Wo, G, p, p, 1, g);
    weight_grad<V>(P, G + p * g.rs + p, g, taps, dw);
    T flipped[kMaxTaps];
    for (int64_t t = 0; t < taps.n; ++t) flipped[t] = w[taps.n - 1 - t];
    correlate<V>(G, g, 1, taps, flipped, g.H, g.W, nullptr, x, gx);
    return;
  }
  // Stride 2: scatter each output's gradient onto its window, then read the interior back.
  copy_into<V, false>(gy, g.Ho, g.Wo, G, 0, 0, 1, g);
  weight_grad<V>(P, G, g, taps, dw);
  std::memset(Q, 0, g.scratch * sizeof(T));
  scatter<V>(G, g, taps, w, Q);
  extract<V>(Q, g, x, gx);
}

template <class V>
void max_pool_forward(const typename V::Scalar* x, typename V::Scalar* y, const PlaneGeometry& g,
                      typename V::Scalar* P) {
  using T = typename V::Scalar;
  copy_into<V, false>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  const Taps taps = window_taps(g, g.stride);
  const V lowest = V::set1(T(-__builtin_inf()));
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const T* row = P + oy * g.stride * g.rs;
    for (int64_t ox = 0; ox < g.Wo; ox += V::width) {
      V m = lowest;
      for (int64_t t = 0; t < taps.n; ++t) m = V::max(V::load(row + taps.off[t] + ox), m);
      store_part(m, y + oy * g.Wo + ox, g.Wo - ox);
    }
  }
}

// The gradient goes to the first maximum of each window in row-major order, as in PyTorch.
template <class V>
void max_pool_backward(const typename V::Scalar* gy, const typename V::Scalar* x, typename V::Scalar* gx,
                       const PlaneGeometry& g, typename V::Scalar* P, typename V::Scalar* G, typename V::Scalar* Q) {
  using T = typename V::Scalar;
  copy_into<V, false>(x, g.H, g.W, P, g.pad, g.pad, g.stride, g);
  copy_into<V, false>(gy, g.Ho, g.Wo, G, 0, 0, 1, g);
  std::memset(Q, 0, g.scratch * sizeof(T));
  const Taps taps = window_taps(g, g.stride);
  const V lowest = V::set1(T(-__builtin_inf()));
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const T* row = P + oy * g.stride * g.rs;
    T* base = Q + oy * g.stride * g.rs;
    for (int64_t ox = 0; ox < g.Wo_pad; ox += V::width) {
      V m = lowest;
      for (int64_t t = 0; t < taps.n; ++t) m = V::max(V::load(row + taps.off[t] + ox), m);
      const V gv = V::load(G + oy * g.rs + ox);
      typename V::Mask taken = V::none();
      for (int64_t t = 0; t < taps.n; ++t) {
        const typename V::Mask hit = V::and_not(taken, V::eq(V::load(row + taps.off[t] + ox), m));
        taken = V::mask_or(taken, hit);
        T* q = base + taps.off[t] + ox;
        V::add(V::load(q), V::masked(hit, gv)).store(q);
      }
    }
  }
  extract<V>(Q, g, nullptr, gx);
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
                       const PlaneGeometry& g, typename V::Scalar* G, typename V::Scalar* Q) {
  using T = typename V::Scalar;
  const int64_t origin = g.stride == 1 ? g.pad * g.rs + g.pad : 0;
  for (int64_t oy = 0; oy < g.Ho; ++oy) {
    const T* s = gy + oy * g.Wo;
    const T* inv = inv_count + oy * g.Wo_pad;
    T* d = G + origin + oy * g.rs;
    for (int64_t ox = 0; ox < g.Wo; ++ox) d[ox] = s[ox] * inv[ox];
  }
  T ones[kMaxTaps];
  for (T& one : ones) one = T(1);
  if (g.stride == 1) {
    correlate<V>(G, g, 1, window_taps(g, 1), ones, g.H, g.W, nullptr, nullptr, gx);
    return;
  }
  std::memset(Q, 0, g.scratch * sizeof(T));
  scatter<V>(G, g, window_taps(g, g.stride), ones, Q);
  extract<V>(Q, g, nullptr, gx);
}

template <class V>
void sums(const typename V::Scalar* u, const typename V::Scalar* v, int64_t n, double* s1, double* s2) {
  V a = V::zero(), b = V::zero();
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) {
    const V x = V::load(u + i);
    a = V::add(a, x);
    b = V::fmadd(x, v == nullptr ? x : V::load(v + i), b);
  }
  double sa = V::hsum(a), sb = V::hsum(b);
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
PlaneKernels<typename V::Scalar> make_table() {
  return {&relu_dwconv_forward<V>, &relu_dwconv_backward<V>, &max_pool_forward<V>, &max_pool_backward<V>,
          &avg_pool_forward<V>,    &avg_pool_backward<V>,    &sums<V>,             &affine<V>};
}

}  // namespace
}  // namespace cpu
}  // namespace natfast
