// Each C++ CPU kernel's forward paired with its backward, once (see autograd.h). As torch-scatter's
// csrc/segment_csr.cpp: a torch::autograd::Function per op, registered as an operator without a
// dispatch key, so autograd records the Function's own graph node wherever it is called from.
#include "cpu/autograd.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include "cpu/ops.h"

namespace natfast {
namespace cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<int64_t> to_vector(at::IntArrayRef values) { return std::vector<int64_t>(values.begin(), values.end()); }

struct ReluDwconv : public torch::autograd::Function<ReluDwconv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
                            int64_t dilation) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["dilation"] = dilation;
    return relu_dwconv_forward(x, weight, stride, dilation);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    auto [grad_x, grad_w] = relu_dwconv_backward(grads[0].contiguous(), s[0], s[1], ctx->saved_data["stride"].toInt(),
                                                 ctx->saved_data["dilation"].toInt());
    return {grad_x, grad_w, at::Tensor(), at::Tensor()};
  }
};

struct Pool2d : public torch::autograd::Function<Pool2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& kind, int64_t kernel,
                            int64_t stride) {
    ctx->save_for_backward({x});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["kernel"] = kernel;
    ctx->saved_data["stride"] = stride;
    return pool2d_forward(x, kind, kernel, stride);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    return {pool2d_backward(grads[0].contiguous(), s[0], ctx->saved_data["kind"].toStringRef(),
                            ctx->saved_data["kernel"].toInt(), ctx->saved_data["stride"].toInt()),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct GroupBatchNorm : public torch::autograd::Function<GroupBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::IntArrayRef groups, double eps) {
    auto [y, mean, rstd] = group_batch_norm_forward(x, groups, eps);
    ctx->save_for_backward({x, mean, rstd});
    ctx->saved_data["groups"] = to_vector(groups);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const auto groups = ctx->saved_data["groups"].toIntVector();
    return {group_batch_norm_backward(grads[0].contiguous(), s[0], s[1], s[2], groups), at::Tensor(), at::Tensor()};
  }
};

// Saves x and the pooled tensor, as the two unfused ops would.
struct PoolBatchNorm : public torch::autograd::Function<PoolBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& kind, int64_t kernel,
                            int64_t stride, at::IntArrayRef groups, double eps) {
    auto [y, pooled, mean, rstd] = pool2d_bn_forward(x, kind, kernel, stride, groups, eps);
    ctx->save_for_backward({x, pooled, mean, rstd});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["kernel"] = kernel;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["groups"] = to_vector(groups);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const auto groups = ctx->saved_data["groups"].toIntVector();
    const at::Tensor grad_x =
        pool2d_bn_backward(grads[0].contiguous(), s[0], s[1], s[2], s[3], ctx->saved_data["kind"].toStringRef(),
                           ctx->saved_data["kernel"].toInt(), ctx->saved_data["stride"].toInt(), groups);
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// One sample at a time (pointwise_bn.cpp), the parts read in place. Saves the parts and the output
// (with affine=False, the normalised value the backward needs): the unfused ops would save the
// concatenation, its ReLU and the convolution's output.
struct Conv1x1BatchNorm : public torch::autograd::Function<Conv1x1BatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, at::IntArrayRef groups, double eps,
                            bool relu_input, at::TensorList parts) {
    auto [y, rstd] = conv1x1_bn_forward(parts, weight, groups, eps, relu_input);
    variable_list saved = {weight, y, rstd};
    saved.insert(saved.end(), parts.begin(), parts.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["groups"] = to_vector(groups);
    ctx->saved_data["relu_input"] = relu_input;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<at::Tensor> parts(s.begin() + 3, s.end());
    const auto groups = ctx->saved_data["groups"].toIntVector();
    auto [grad_parts, grad_w] = conv1x1_bn_backward(grads[0].contiguous(), parts, s[0], s[1], s[2], groups,
                                                    ctx->saved_data["relu_input"].toBool());
    variable_list out = {grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
    out.insert(out.end(), grad_parts.begin(), grad_parts.end());
    return out;
  }
};

// The input gradient is the same kind of convolution, of the output gradient with the weight
// transposed and flipped, then masked by the ReLU; the weight gradient is ATen's (oneDNN's) alone,
// channels-last (its faster layout) up to 32 channels.
struct ReluConv3x3Winograd : public torch::autograd::Function<ReluConv3x3Winograd> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight) {
    const at::Tensor x = x_in.contiguous();
    ctx->save_for_backward({x, weight});
    return conv3x3_winograd(x, weight, true);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &weight = s[1], grad_y = grads[0].contiguous();
    const at::Tensor flipped = weight.transpose(0, 1).flip({2, 3});
    const at::Tensor grad_x = at::threshold_backward(conv3x3_winograd(grad_y, flipped, false), x, 0);
    const auto layout = x.size(1) <= 32 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const at::Tensor grad_w = std::get<1>(at::convolution_backward(
        grad_y.contiguous(layout), at::relu(x).contiguous(layout), weight.contiguous(layout), std::nullopt, {1, 1},
        {1, 1}, {1, 1}, false, {0, 0}, 1, {false, true, false})).contiguous();
    return {grad_x, grad_w};
  }
};

}  // namespace

bool takes(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation) {
  return ReluDwconv::apply(x, weight, stride, dilation);
}

at::Tensor pool2d(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride) {
  return Pool2d::apply(x, kind, kernel, stride);
}

at::Tensor group_batch_norm(const at::Tensor& x, at::IntArrayRef groups, double eps) {
  return GroupBatchNorm::apply(x, groups, eps);
}

at::Tensor pool2d_bn(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride,
                     at::IntArrayRef groups, double eps) {
  return PoolBatchNorm::apply(x, kind, kernel, stride, groups, eps);
}

at::Tensor conv1x1_bn(at::TensorList parts, const at::Tensor& weight, at::IntArrayRef groups, double eps,
                      bool relu_input) {
  return Conv1x1BatchNorm::apply(weight, groups, eps, relu_input, parts);
}

bool winograd_fits(const at::Tensor& x, const at::Tensor& weight, int64_t stride) {
  return x.scalar_type() == at::kFloat && stride == 1 && weight.dim() == 4 && weight.size(1) == x.size(1) &&
         weight.size(2) == 3 && weight.size(3) == 3 && x.size(2) % 2 == 0 && x.size(3) % 2 == 0;
}

at::Tensor relu_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight) {
  return ReluConv3x3Winograd::apply(x, weight);
}

}  // namespace cpu
}  // namespace natfast

// Without a dispatch key: one kernel for every key, whose autograd Function records the backward.
TORCH_LIBRARY_FRAGMENT(natfast, m) {
  m.def("cpu_relu_dwconv(Tensor x, Tensor weight, int stride, int dilation) -> Tensor", &natfast::cpu::relu_dwconv);
  m.def("cpu_pool2d(Tensor x, str kind, int kernel, int stride) -> Tensor", &natfast::cpu::pool2d);
  m.def("cpu_group_batch_norm(Tensor x, int[] groups, float eps) -> Tensor", &natfast::cpu::group_batch_norm);
  m.def("cpu_pool2d_bn(Tensor x, str kind, int kernel, int stride, int[] groups, float eps) -> Tensor",
        &natfast::cpu::pool2d_bn);
  m.def("cpu_conv1x1_bn(Tensor[] parts, Tensor weight, int[] groups, float eps, bool relu_input) -> Tensor",
        &natfast::cpu::conv1x1_bn);
  m.def("cpu_relu_conv3x3_winograd(Tensor x, Tensor weight) -> Tensor", &natfast::cpu::relu_conv3x3_winograd);
  m.def("cpu_winograd_fits(Tensor x, Tensor weight, int stride) -> bool", &natfast::cpu::winograd_fits);
}
