#pragma once
// The C++ CPU kernels (csrc/cpu) paired with their backward, once: each is a torch::autograd::Function,
// registered as an operator natfast::cpu_<op> (autograd records it, on any caller) that the Python
// backend (natfast/ops/backends/cpu.py) calls, and called directly by the compiled executor
// (csrc/executor). `groups`: the sizes of sample groups with their own BN statistics (empty: one).
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace natfast {
namespace cpu {

constexpr double kEps = 1e-5;  // BN's epsilon: natfast.ops.norm.EPS

// Whether the kernels take x: a CPU float32/float64 tensor (natfast/ops/backends/cpu.py's limits).
bool takes(const at::Tensor& x);

// conv2d(relu(x), weight, groups=C) with 'same' padding.
at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation);
// k x k max or average ("max", "avg") pooling, 'same' padding, the average excluding it.
at::Tensor pool2d(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride);
// BN (affine=False, batch statistics per group).
at::Tensor group_batch_norm(const at::Tensor& x, at::IntArrayRef groups, double eps);
// group_batch_norm(pool2d(x)) in one pass each way.
at::Tensor pool2d_bn(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride,
                     at::IntArrayRef groups, double eps);
// group_batch_norm(conv1x1(relu?(cat(parts, dim=1)), weight)), the parts read in place.
at::Tensor conv1x1_bn(at::TensorList parts, const at::Tensor& weight, at::IntArrayRef groups, double eps,
                      bool relu_input);
// Whether relu_conv3x3_winograd takes conv2d(relu(x), weight) with 'same' padding: float32, k = 3,
// stride 1, even sizes (the Python backend asks the same through natfast::cpu_winograd_fits).
bool winograd_fits(const at::Tensor& x, const at::Tensor& weight, int64_t stride);
// conv2d(relu(x), weight), k = 3, 'same' padding, by Winograd's F(2x2, 3x3).
at::Tensor relu_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight);

}  // namespace cpu
}  // namespace natfast
