#pragma once
// What the plane-wise operators share: argument checks and the parallel loop over the planes of an
// NCHW tensor with per-thread scratch buffers. (Not for kernels_*.cpp: inline code here is compiled
// without AVX2 and must stay so.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/plane_kernels.h"

namespace natfast {
namespace cpu {

inline void check_planes(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 4, op, ": expected an (N, C, H, W) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": supports float32 and float64, got ", x.scalar_type());
}

inline void check_window(int64_t k, int64_t stride, int64_t dilation, const char* op) {
  TORCH_CHECK(k >= 1 && k % 2 == 1 && k <= kMaxKernel, op, ": kernel size must be odd and at most ", kMaxKernel,
              ", got ", k);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be positive, got ", dilation);
}

// Threads split planes of `plane` elements in chunks of at least about 32K elements: below that,
// starting threads costs more than it saves.
inline int64_t plane_grain(int64_t plane) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, plane)); }

// Calls fn(i) for every plane i in [0, planes) across ATen's threads.
template <typename Fn>
void for_each_plane_of(int64_t planes, int64_t plane, const Fn& fn) {
  at::parallel_for(0, planes, plane_grain(plane), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

// Calls fn(i, buffers) for every plane i in [0, planes) across ATen's threads. Each thread owns
// `count` (<= 4) scratch buffers (plane_kernels.h): the first filled with p_fill, the others zero.
template <typename T, typename Fn>
void for_each_plane(int64_t planes, const PlaneGeometry& g, T p_fill, int count, const Fn& fn) {
  at::parallel_for(0, planes, plane_grain(g.H * g.W), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(count * g.scratch, T(0));
    std::fill(scratch.begin(), scratch.begin() + g.scratch, p_fill);
    T* buffers[4] = {nullptr, nullptr, nullptr, nullptr};
    for (int i = 0; i < count; ++i) buffers[i] = scratch.data() + i * g.scratch;
    for (int64_t i = begin; i < end; ++i) fn(i, buffers);
  });
}

}  // namespace cpu
}  // namespace natfast
