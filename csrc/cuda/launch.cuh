// Launch sizes and a warp reduction shared by the CUDA kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace natfast {
namespace cuda {

constexpr int kThreads = 256;     // threads per block of the elementwise-style kernels
constexpr int kMaxThreads = 1024; // upper bound on blockDim, sizes shared scratch arrays

// A grid-stride loop covers any size; cap the grid so huge tensors do not launch millions of blocks.
inline unsigned grid_for(int64_t total, int threads = kThreads) {
  return static_cast<unsigned>(std::min<int64_t>((total + threads - 1) / threads, 65535));
}

// Butterfly-free tree reduction within a warp: a fixed order, so results are reproducible.
template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace cuda
}  // namespace natfast
