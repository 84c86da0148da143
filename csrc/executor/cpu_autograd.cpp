// Autograd functions over the C++ CPU kernels (see cpu_autograd.h). Each forward saves what its
// kernel's backward takes, exactly as the Python autograd functions in natfast/ops/backends/cpu.py.
#include "executor/cpu_autograd.h"

#include <torch/autograd.h>

#include "cpu/ops.h"

namespace natfast {
namespace executor {
namespace cpu_autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Groups: none (one group, the whole batch): the executor runs one architecture on its batch.
const std::vector<int64_t> kOneGroup;

struct ReluDwconv : public torch::autograd::Function<ReluDwconv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
                            int64_t dilation) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["dilation"] = dilation;
    return cpu::relu_dwconv_forward(x, weight, stride, dilation);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_x, grad_w] = cpu::relu_dwconv_backward(grads[0], saved[0], saved[1], ctx->saved_data["stride"].toInt(),
                                                      ctx->saved_data["dilation"].toInt());
    return {grad_x, grad_w, at::Tensor(), at::Tensor()};
  }
};

struct Conv1x1Bn : public torch::autograd::Function<Conv1x1Bn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, bool relu_input, at::TensorList parts) {
    auto [y, rstd] = cpu::conv1x1_bn_forward(parts, weight, kOneGroup, kEps, relu_input);
    variable_list saved = {weight, y, rstd};
    saved.insert(saved.end(), parts.begin(), parts.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["relu_input"] = relu_input;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> parts(saved.begin() + 3, saved.end());
    auto [grad_parts, grad_w] = cpu::conv1x1_bn_backward(grads[0], parts, saved[0], saved[1], saved[2], kOneGroup,
                                                         ctx->saved_data["relu_input"].toBool());
    variable_list out = {grad_w, at::Tensor()};
    out.insert(out.end(), grad_parts.begin(), grad_parts.end());
    return out;
  }
};

struct PoolBn : public torch::autograd::Function<PoolBn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& kind, int64_t kernel,
                            int64_t stride) {
    auto [y, pooled, mean, rstd] = cpu::pool2d_bn_forward(x, kind, kernel, stride, kOneGroup, kEps);
    ctx->save_for_backward({x, pooled, mean, rstd});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["kernel"] = kernel;
    ctx->saved_data["stride"] = stride;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    at::Tensor grad_x = cpu::pool2d_bn_backward(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["kind"].toStringRef(),
                                                ctx->saved_data["kernel"].toInt(), ctx->saved_data["stride"].toInt(),
                                                kOneGroup);
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// relu_conv2d by Winograd (as ReluConv3x3Winograd in natfast/ops/backends/cpu.py): the input
// gradient is the same convolution of the output gradient with the weight transposed and flipped,
// masked by the ReLU; the weight gradient is ATen's (oneDNN's) alone, channels-last up to 32 channels.
struct ReluConv3x3Winograd : public torch::autograd::Function<ReluConv3x3Winograd> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight) {
    const at::Tensor x = x_in.contiguous();
    ctx->save_for_backward({x, weight});
    return cpu::conv3x3_winograd(x, weight, true);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &weight = s[1], grad_y = grads[0].contiguous();
    const at::Tensor flipped = weight.transpose(0, 1).flip({2, 3});
    const at::Tensor grad_x = at::threshold_backward(cpu::conv3x3_winograd(grad_y, flipped, false), x, 0);
    const auto layout = x.size(1) <= 32 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const at::Tensor grad_w = std::get<1>(at::convolution_backward(
        grad_y.contiguous(layout), at::relu(x).contiguous(layout), weight.contiguous(layout), std::nullopt, {1, 1},
        {1, 1}, {1, 1}, false, {0, 0}, 1, {false, true, false})).contiguous();
    return {grad_x, grad_w};
  }
};

struct BatchNorm : public torch::autograd::Function<BatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    auto [y, mean, rstd] = cpu::group_batch_norm_forward(x, kOneGroup, kEps);
    ctx->save_for_backward({x, mean, rstd});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    return {cpu::group_batch_norm_backward(grads[0], s[0], s[1], s[2], kOneGroup)};
  }
};

}  // namespace

bool takes(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation) {
  return ReluDwconv::apply(x, weight, stride, dilation);
}

at::Tensor conv1x1_bn(const std::vector<at::Tensor>& parts, const at::Tensor& weight, bool relu_input) {
  return Conv1x1Bn::apply(weight, relu_input, at::TensorList(parts));
}

at::Tensor pool_bn(const at::Tensor& x, const std::string& kind, int64_t kernel, int64_t stride) {
  return PoolBn::apply(x, kind, kernel, stride);
}

at::Tensor batch_norm(const at::Tensor& x) { return BatchNorm::apply(x); }

bool winograd_fits(const at::Tensor& x, const at::Tensor& weight, int64_t stride) {
  return x.scalar_type() == at::kFloat && stride == 1 && weight.size(2) == 3 && weight.size(3) == 3 &&
         x.size(2) % 2 == 0 && x.size(3) % 2 == 0;
}

at::Tensor relu_conv3x3_winograd(const at::Tensor& x, const at::Tensor& weight) {
  return ReluConv3x3Winograd::apply(x, weight);
}

}  // namespace cpu_autograd
}  // namespace executor
}  // namespace natfast
