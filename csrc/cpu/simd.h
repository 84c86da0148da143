#pragma once
// The vector types the plane kernels are written against: VecScalar<T> (one lane, any CPU);
// in the translation unit compiled for AVX2 (NATFAST_SIMD_AVX2 defined under
// `#pragma GCC target("avx2,fma")`), VecAvx2f (8 floats); and in kernels_vec128.cpp
// (NATFAST_SIMD_VEC128), Vec128f (4 floats in the compiler's generic vectors: NEON on ARM, SSE on
// x86, for CPUs without AVX2). Internal linkage on purpose: an inline function compiled with AVX2
// enabled must never be merged with, and picked for, another build.
#include <cstdint>
#include <cstring>
#ifdef NATFAST_SIMD_AVX2
#include <immintrin.h>
#endif

namespace natfast {
namespace cpu {
namespace {

template <typename T>
struct VecScalar {
  using Scalar = T;
  using Mask = bool;
  static constexpr int64_t width = 1;
  T v;
  static VecScalar load(const T* p) { return {*p}; }
  static VecScalar set1(T a) { return {a}; }
  static VecScalar zero() { return {T(0)}; }
  void store(T* p) const { *p = v; }
  static VecScalar fmadd(VecScalar a, VecScalar b, VecScalar c) { return {a.v * b.v + c.v}; }
  static VecScalar add(VecScalar a, VecScalar b) { return {a.v + b.v}; }
  static VecScalar sub(VecScalar a, VecScalar b) { return {a.v - b.v}; }
  static VecScalar mul(VecScalar a, VecScalar b) { return {a.v * b.v}; }
  // b when either is NaN (like maxps): max(zero, x) is a NaN-propagating ReLU.
  static VecScalar max(VecScalar a, VecScalar b) { return {a.v > b.v ? a.v : b.v}; }
  static Mask gt(VecScalar a, VecScalar b) { return a.v > b.v; }
  static Mask eq(VecScalar a, VecScalar b) { return a.v == b.v; }
  static VecScalar masked(Mask m, VecScalar a) { return {m ? a.v : T(0)}; }
  static VecScalar select(Mask m, VecScalar a, VecScalar b) { return {m ? a.v : b.v}; }
  static T hsum(VecScalar a) { return a.v; }
  // 2 * width consecutive values (a, b) <-> their even- and odd-indexed halves.
  static void deinterleave(VecScalar a, VecScalar b, VecScalar* even, VecScalar* odd) {
    *even = a;
    *odd = b;
  }
  static void interleave(VecScalar even, VecScalar odd, VecScalar* a, VecScalar* b) {
    *a = even;
    *b = odd;
  }
};

#ifdef NATFAST_SIMD_AVX2
struct VecAvx2f {
  using Scalar = float;
  using Mask = __m256;
  static constexpr int64_t width = 8;
  __m256 v;
  static VecAvx2f load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static VecAvx2f set1(float a) { return {_mm256_set1_ps(a)}; }
  static VecAvx2f zero() { return {_mm256_setzero_ps()}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static VecAvx2f fmadd(VecAvx2f a, VecAvx2f b, VecAvx2f c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static VecAvx2f add(VecAvx2f a, VecAvx2f b) { return {_mm256_add_ps(a.v, b.v)}; }
  static VecAvx2f sub(VecAvx2f a, VecAvx2f b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static VecAvx2f mul(VecAvx2f a, VecAvx2f b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static VecAvx2f max(VecAvx2f a, VecAvx2f b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Mask gt(VecAvx2f a, VecAvx2f b) { return _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ); }
  static Mask eq(VecAvx2f a, VecAvx2f b) { return _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ); }
  static VecAvx2f masked(Mask m, VecAvx2f a) { return {_mm256_and_ps(m, a.v)}; }
  static VecAvx2f select(Mask m, VecAvx2f a, VecAvx2f b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
  static float hsum(VecAvx2f a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void deinterleave(VecAvx2f a, VecAvx2f b, VecAvx2f* even, VecAvx2f* odd) {
    // shuffle_ps works within 128-bit lanes; permute4x64 then puts the 64-bit pairs in order.
    const __m256 e = _mm256_shuffle_ps(a.v, b.v, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 o = _mm256_shuffle_ps(a.v, b.v, _MM_SHUFFLE(3, 1, 3, 1));
    even->v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    odd->v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static void interleave(VecAvx2f even, VecAvx2f odd, VecAvx2f* a, VecAvx2f* b) {
    const __m256 lo = _mm256_unpacklo_ps(even.v, odd.v), hi = _mm256_unpackhi_ps(even.v, odd.v);
    a->v = _mm256_permute2f128_ps(lo, hi, 0x20);
    b->v = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
};
#endif

#ifdef NATFAST_SIMD_VEC128
// GCC's and clang's vector extensions (Apple clang's too): one source for NEON and SSE. The
// compiler picks the instructions; a * b + c becomes one fused multiply-add where the target has it
// (NEON's fmla), as in VecAvx2f.
struct Vec128f {
  typedef float Native __attribute__((vector_size(16)));
  typedef int32_t Mask __attribute__((vector_size(16)));  // all ones where true, as compares give
  using Scalar = float;
  static constexpr int64_t width = 4;
  Native v;
  static Vec128f load(const float* p) {
    Vec128f r;
    std::memcpy(&r.v, p, sizeof(r.v));  // unaligned: compiles to one vector load
    return r;
  }
  static Vec128f set1(float a) { return {Native{a, a, a, a}}; }
  static Vec128f zero() { return {Native{0.f, 0.f, 0.f, 0.f}}; }
  void store(float* p) const { std::memcpy(p, &v, sizeof(v)); }
  static Vec128f fmadd(Vec128f a, Vec128f b, Vec128f c) { return {a.v * b.v + c.v}; }
  static Vec128f add(Vec128f a, Vec128f b) { return {a.v + b.v}; }
  static Vec128f sub(Vec128f a, Vec128f b) { return {a.v - b.v}; }
  static Vec128f mul(Vec128f a, Vec128f b) { return {a.v * b.v}; }
  // b when either is NaN (like maxps and VecScalar::max).
  static Vec128f max(Vec128f a, Vec128f b) { return select(gt(a, b), a, b); }
  static Mask gt(Vec128f a, Vec128f b) { return (Mask)(a.v > b.v); }
  static Mask eq(Vec128f a, Vec128f b) { return (Mask)(a.v == b.v); }
  static Vec128f masked(Mask m, Vec128f a) { return {(Native)(m & (Mask)a.v)}; }
  static Vec128f select(Mask m, Vec128f a, Vec128f b) { return {(Native)((m & (Mask)a.v) | (~m & (Mask)b.v))}; }
  static float hsum(Vec128f a) { return (a.v[0] + a.v[2]) + (a.v[1] + a.v[3]); }
  static void deinterleave(Vec128f a, Vec128f b, Vec128f* even, Vec128f* odd) {
    even->v = Native{a.v[0], a.v[2], b.v[0], b.v[2]};
    odd->v = Native{a.v[1], a.v[3], b.v[1], b.v[3]};
  }
  static void interleave(Vec128f even, Vec128f odd, Vec128f* a, Vec128f* b) {
    a->v = Native{even.v[0], odd.v[0], even.v[1], odd.v[1]};
    b->v = Native{even.v[2], odd.v[2], even.v[3], odd.v[3]};
  }
};
#endif

}  // namespace
}  // namespace cpu
}  // namespace natfast
