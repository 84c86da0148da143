#pragma once
// natfast's C++ CPU kernels (csrc/cpu) as autograd-recorded functions for the compiled executor:
// the same kernels the Python path's CPU backend runs (natfast/ops/backends/cpu.py), so the executor
// on a CPU is as fast per op as the Python path and only drops the per-op Python dispatch.
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace natfast {
namespace executor {
namespace cpu_autograd {

constexpr double kEps = 1e-5;  // BN's epsilon: natfast.ops.norm.EPS

// Whether the kernels take x: a CPU float32/float64 tensor (others run ATen's ops).
bool takes(const at::Tensor& x);

// conv2d(relu(x), weight, groups=C) with 'same' padding.
at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation);
// BN (affine=False, batch statistics) of conv1x1(relu?(cat(parts, dim=1)), weight).
at::Tensor conv1x1_bn(const std::vector<at::Tensor>& parts, const at::Tensor& weight, bool relu_input);
// BN of pool2d(x, kind in {"max", "avg"}, kernel, stride) ('same' padding, avg excluding padding).
at::Tensor pool_bn(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride);
// BN (affine=False, batch statistics).
at::Tensor batch_norm(const at::Tensor& x);
// Whether relu_conv3x3_winograd takes this conv2d(relu(x), weight) with 'same' padding: float32 (as
// the Python path's dispatch rule), k = 3, stride 1, even sizes.
bool winograd_fits(const at::Tensor& x, const at::Tensor& weight, int64_t stride);
at::Tensor relu_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight);

}  // namespace cpu_autograd
}  // namespace executor
}  // namespace natfast
