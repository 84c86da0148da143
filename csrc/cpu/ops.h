#pragma once
// The C++ CPU kernels' entry points, as registered (natfast::cpu_*, see each .cpp for what they
// compute). Declared here for callers inside the extension (the compiled executor), which call them
// directly rather than through the dispatcher.
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace natfast {
namespace cpu {

// depthwise.cpp
at::Tensor relu_dwconv_forward(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation);
std::tuple<at::Tensor, at::Tensor> relu_dwconv_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                        const at::Tensor& weight, int64_t stride, int64_t dilation);

// pool.cpp
at::Tensor pool2d_forward(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride);
at::Tensor pool2d_backward(const at::Tensor& grad_y, const at::Tensor& x, const std::string& kind, int64_t kernel,
                           int64_t stride);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pool2d_bn_forward(const at::Tensor& x,
                                                                             const std::string& kind, int64_t kernel,
                                                                             int64_t stride, at::IntArrayRef groups,
                                                                             double eps);
at::Tensor pool2d_bn_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pooled,
                              const at::Tensor& mean, const at::Tensor& rstd, const std::string& kind, int64_t kernel,
                              int64_t stride, at::IntArrayRef groups);

// batch_norm.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_batch_norm_forward(const at::Tensor& x, at::IntArrayRef groups,
                                                                        double eps);
at::Tensor group_batch_norm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean,
                                     const at::Tensor& rstd, at::IntArrayRef groups);

// pointwise_bn.cpp
std::tuple<at::Tensor, at::Tensor> conv1x1_bn_forward(at::TensorList parts, const at::Tensor& weight,
                                                      at::IntArrayRef groups, double eps, bool relu_input);
// conv1x1_bn_forward's y for each weight, the input read once for all (forward only: scoring).
std::vector<at::Tensor> conv1x1_bn_forward_each(at::TensorList parts, at::TensorList weights, at::IntArrayRef groups,
                                                double eps, bool relu_input);
// FactorizedReduce (two stride-2 1x1 convolutions, concatenated, BN), forward only: scoring.
at::Tensor factorized_reduce_bn_forward(at::TensorList even, at::TensorList odd, const at::Tensor& weight_a,
                                        const at::Tensor& weight_b, at::IntArrayRef groups, double eps,
                                        bool relu_input);
std::tuple<std::vector<at::Tensor>, at::Tensor> conv1x1_bn_backward(const at::Tensor& grad_y, at::TensorList parts,
                                                                    const at::Tensor& weight, const at::Tensor& y,
                                                                    const at::Tensor& rstd, at::IntArrayRef groups,
                                                                    bool relu_input);

// dwconv_pointwise_bn.cpp (forward only)
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_pointwise_bn_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& in_shift,
    const at::Tensor& dw_weight, const at::Tensor& pw_weight, int64_t stride, int64_t dilation, at::IntArrayRef groups,
    double eps, bool normalize);

// conv_bn.cpp (forward only; conv3x3_winograd also serves as its own input gradient)
at::Tensor relu_conv_bn_forward(const at::Tensor& x, const at::Tensor& weight, int64_t stride, at::IntArrayRef groups,
                                double eps);
at::Tensor conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight, bool relu_input);

}  // namespace cpu
}  // namespace natfast
