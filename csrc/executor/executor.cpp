// The compiled sampled-path executor: one architecture's forward through the supernet's shared
// weights (stem -> cells -> classifier) in C++, with plain ATen calls that autograd records, so the
// backward needs nothing extra and no op goes through Python dispatch.
//
// It keeps no rule of how a cell runs: natfast/cell_plan.py decides (which edges run, their strides,
// which nodes are known zeros, which edge repeats another, which channel blocks reach the next cell)
// and natfast/executor.py packs that plan into two integer tensors read here:
//   cells (layers, 7 + B): pre0 kind (0 unused, 1 ReLU+1x1 conv+BN, 2 FactorizedReduce), its first
//     parameter, pre1 used (0/1), its parameter, the cell's first and one-past-last row of `slots`,
//     its output count, then the output nodes' blocks (node - 2) in concat order, -1 padded;
//   slots (rows, 8): kind (natfast.cell_plan.KINDS order), window, dilation, source node, target node,
//     stride, first parameter, and the row whose value it repeats (-1: computed).
// params: the stem's weight, then per cell what the plan says runs, then the classifier's weight, bias.
// With `cpu_kernels` (a CPU run where the Python path would use natfast's C++ CPU kernels), the ops
// run those kernels (their autograd pairing: cpu/autograd.h), else ATen's. BN is affine=False with batch statistics.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/autograd.h"

namespace natfast {
namespace executor {
namespace {

// The kinds of op, in natfast.cell_plan.KINDS order (executor_kinds() returns these names, and
// natfast/executor.py checks them against its own list).
enum Kind : int64_t { kNull, kSkip, kMaxPool, kAvgPool, kSepConv, kDilConv, kConv, kNumKinds };
const char* const kKindNames[kNumKinds] = {"null", "skip", "max_pool", "avg_pool", "sep_conv", "dil_conv", "conv"};

using cpu::kEps;

// Which kernels run the ops: natfast's CPU kernels (where the tensor suits them) or ATen's.
struct Kernels {
  bool cpu = false;
  bool take(const at::Tensor& x) const { return cpu && cpu::takes(x); }
  // BN with one value per channel is an error either way; ATen's says so.
  bool take_bn(const at::Tensor& x) const { return take(x) && x.size(0) * x.size(2) * x.size(3) > 1; }
};

at::Tensor batch_norm(const at::Tensor& x, const Kernels& k) {
  if (k.take_bn(x)) return cpu::group_batch_norm(x, {}, kEps);
  return at::batch_norm(x, {}, {}, {}, {}, /*training=*/true, /*momentum=*/0.1, kEps, /*cudnn_enabled=*/true);
}

at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t dilation, const Kernels& k) {
  if (k.take(x)) return cpu::relu_dwconv(x, w, stride, dilation);
  const int64_t size = w.size(-1);
  return at::conv2d(at::relu(x), w, {}, stride, dilation * (size - 1) / 2, dilation, x.size(1));
}

// BN of conv1x1(relu?(cat(parts))): the pointwise end of a DilConv, or a cell's preprocessing.
at::Tensor conv1x1_bn(const std::vector<at::Tensor>& parts, const at::Tensor& w, bool relu_input, const Kernels& k) {
  if (k.take_bn(parts[0])) return cpu::conv1x1_bn(parts, w, {}, kEps, relu_input);
  const at::Tensor x = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
  return batch_norm(at::conv2d(relu_input ? at::relu(x) : x, w), k);
}

// DilConv: ReLU, depthwise, pointwise, BN.
at::Tensor dil_conv(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t stride, int64_t dilation,
                    const Kernels& k) {
  return conv1x1_bn({relu_dwconv(x, dw, stride, dilation, k)}, pw, false, k);
}

// The stride-2 1x1 convolutions read only the even (shifted: odd) pixels of each part. BN is per
// channel, so each half is its own ReLU + 1x1 conv + BN (as natfast/ops/layers.py FactorizedReduce).
at::Tensor factorized_reduce(const std::vector<at::Tensor>& parts, const at::Tensor& wa, const at::Tensor& wb,
                             const Kernels& k) {
  std::vector<at::Tensor> even, odd;
  for (const at::Tensor& part : parts) {
    even.push_back(part.slice(2, 0, {}, 2).slice(3, 0, {}, 2));
    odd.push_back(part.slice(2, 1, {}, 2).slice(3, 1, {}, 2));
  }
  return at::cat({conv1x1_bn(even, wa, true, k), conv1x1_bn(odd, wb, true, k)}, 1);
}

at::Tensor relu_conv_bn(const at::Tensor& x, const at::Tensor& w, int64_t stride, const Kernels& k) {
  const int64_t size = w.size(-1);
  if (size == 1 && stride == 1) return conv1x1_bn({x}, w, true, k);
  if (k.take(x) && cpu::winograd_fits(x, w, stride)) return batch_norm(cpu::relu_conv3x3_winograd(x, w), k);
  return batch_norm(at::conv2d(at::relu(x), w, {}, stride, size / 2), k);
}

at::Tensor pool_bn(const at::Tensor& x, bool max, int64_t size, int64_t stride, const Kernels& k) {
  const int64_t out_pixels = ((x.size(2) - 1) / stride + 1) * ((x.size(3) - 1) / stride + 1);
  if (k.take(x) && x.size(0) * out_pixels > 1) return cpu::pool2d_bn(x, max ? "max" : "avg", size, stride, {}, kEps);
  const at::Tensor pooled = max ? at::max_pool2d(x, size, stride, size / 2)
                                : at::avg_pool2d(x, size, stride, size / 2, /*ceil_mode=*/false,
                                                 /*count_include_pad=*/false);
  return batch_norm(pooled, k);
}

// One op of kind `kind` on x; its weights are params[first], params[first + 1], ... in the order of
// its module's parameters (SepConv: first.depthwise, first.pointwise, second.*; FactorizedReduce:
// conv_a, conv_b).
at::Tensor run_op(int64_t kind, int64_t window, int64_t dilation, const at::Tensor& x, int64_t stride,
                  const std::vector<at::Tensor>& params, int64_t first, const Kernels& k) {
  auto w = [&](int64_t i) -> const at::Tensor& { return params.at(first + i); };
  switch (kind) {
    case kMaxPool: case kAvgPool:
      return pool_bn(x, kind == kMaxPool, window, stride, k);
    case kSkip:
      return stride == 1 ? x : factorized_reduce({x}, w(0), w(1), k);
    case kSepConv:
      return dil_conv(dil_conv(x, w(0), w(1), stride, dilation, k), w(2), w(3), 1, dilation, k);
    case kDilConv:
      return dil_conv(x, w(0), w(1), stride, dilation, k);
    case kConv:
      return relu_conv_bn(x, w(0), stride, k);
    default:
      TORCH_CHECK(false, "executor_forward: op kind ", kind, " cannot be executed");
  }
}

// A cell's (or the stem's) output: its non-zero output nodes in concat order (known zeros are left
// out); `blocks` holds each node's position among the B node blocks (empty: the stem, whose single
// value covers all channels).
struct CellOutput {
  std::vector<at::Tensor> values;
  std::vector<int64_t> blocks;
};

// The input channels of a weight (dim 1) that belong to the given node blocks of width `width`,
// as narrow views (consecutive blocks merged) rather than an index tensor: no host-to-device copy,
// so the executor stays capturable in a CUDA graph.
at::Tensor select_blocks(const at::Tensor& w, const std::vector<int64_t>& blocks, int64_t width, int64_t dim) {
  std::vector<at::Tensor> pieces;
  size_t i = 0;
  while (i < blocks.size()) {
    size_t j = i + 1;
    while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1) ++j;
    pieces.push_back(w.narrow(dim, blocks[i] * width, static_cast<int64_t>(j - i) * width));
    i = j;
  }
  return pieces.size() == 1 ? pieces[0] : at::cat(pieces, dim);
}

bool is_all_blocks(const std::vector<int64_t>& blocks, int64_t num_nodes) {
  if (static_cast<int64_t>(blocks.size()) != num_nodes) return false;
  for (int64_t i = 0; i < num_nodes; ++i)
    if (blocks[i] != i) return false;
  return true;
}

// ReLU + 1x1 conv + BN (kind 1) or FactorizedReduce (kind 2) of a cell output: its non-zero nodes go
// in as parts (the CPU kernel reads them in place; ATen's path concatenates them), and the weights keep
// the input channels of those nodes' blocks.
at::Tensor preprocess(const CellOutput& in, int64_t kind, const std::vector<at::Tensor>& params, int64_t first,
                      int64_t num_nodes, const Kernels& k) {
  std::vector<at::Tensor> weights = {params.at(first)};
  if (kind == 2) weights.push_back(params.at(first + 1));
  if (!in.blocks.empty() && !is_all_blocks(in.blocks, num_nodes)) {
    const int64_t width = in.values[0].size(1);
    for (auto& w : weights) w = select_blocks(w, in.blocks, width, 1);
  }
  if (kind == 2) return factorized_reduce(in.values, weights[0], weights[1], k);
  return conv1x1_bn(in.values, weights[0], true, k);
}

CellOutput run_cell(at::TensorAccessor<int64_t, 1> cell, at::TensorAccessor<int64_t, 2> slots, int64_t num_nodes,
                    const CellOutput& in_pp, const CellOutput& in_p, const std::vector<at::Tensor>& params,
                    const Kernels& k) {
  std::vector<at::Tensor> nodes(num_nodes + 2);
  if (cell[0] != 0) nodes[0] = preprocess(in_pp, cell[0], params, cell[1], num_nodes, k);
  if (cell[2] != 0) nodes[1] = preprocess(in_p, 1, params, cell[3], num_nodes, k);
  std::vector<at::Tensor> values(cell[5]);  // each slot's output, by row
  for (int64_t row = cell[4]; row < cell[5]; ++row) {
    const auto s = slots[row];
    const int64_t source = s[3], target = s[4];
    TORCH_CHECK(source >= 0 && source < target && target < num_nodes + 2 && nodes[source].defined(),
                "executor_forward: slot ", row, " reads node ", source, ", which the plan did not compute");
    at::Tensor& y = values[row];
    y = s[7] >= 0 ? values.at(s[7]) : run_op(s[0], s[1], s[2], nodes[source], s[5], params, s[6], k);
    nodes[target] = nodes[target].defined() ? nodes[target] + y : y;
  }
  CellOutput out;
  for (int64_t j = 0; j < cell[6]; ++j) {
    const int64_t block = cell[7 + j];
    TORCH_CHECK(nodes[block + 2].defined(), "executor_forward: output node ", block + 2, " was not computed");
    out.values.push_back(nodes[block + 2]);
    out.blocks.push_back(block);
  }
  return out;
}

at::Tensor classify(const CellOutput& out, const at::Tensor& weight, const at::Tensor& bias, int64_t batch,
                    int64_t num_nodes) {
  if (out.values.empty()) return bias.expand({batch, bias.size(0)});
  std::vector<at::Tensor> pooled;
  for (const at::Tensor& v : out.values) pooled.push_back(v.mean({2, 3}));
  const at::Tensor features = pooled.size() == 1 ? pooled[0] : at::cat(pooled, 1);
  const at::Tensor w =
      is_all_blocks(out.blocks, num_nodes) ? weight : select_blocks(weight, out.blocks, pooled[0].size(1), 1);
  return at::linear(features, w, bias);
}

at::Tensor executor_forward(const at::Tensor& x, const at::Tensor& cells, const at::Tensor& slots,
                            at::TensorList params_list, bool cpu_kernels) {
  TORCH_CHECK(cells.dim() == 2 && cells.size(0) > 0 && cells.size(1) > 7 && cells.scalar_type() == at::kLong &&
                  cells.device().is_cpu(),
              "executor_forward: cells must be a CPU int64 tensor (layers, 7 + B) packed by natfast/executor.py");
  TORCH_CHECK(slots.dim() == 2 && slots.size(1) == 8 && slots.scalar_type() == at::kLong && slots.device().is_cpu(),
              "executor_forward: slots must be a CPU int64 tensor (rows, 8) packed by natfast/executor.py");
  const auto c = cells.contiguous(), sl = slots.contiguous();
  const auto ca = c.accessor<int64_t, 2>();
  const auto sa = sl.accessor<int64_t, 2>();
  const int64_t num_nodes = c.size(1) - 7;
  const std::vector<at::Tensor> params(params_list.begin(), params_list.end());
  TORCH_CHECK(params.size() >= 3, "executor_forward: too few parameters");
  const Kernels kernels{cpu_kernels};

  const at::Tensor stem = batch_norm(at::conv2d(x, params[0], {}, 1, 1), kernels);
  CellOutput pp{{stem}, {}}, prev{{stem}, {}};
  for (int64_t i = 0; i < c.size(0); ++i) {
    TORCH_CHECK(ca[i][4] >= 0 && ca[i][4] <= ca[i][5] && ca[i][5] <= sl.size(0) && ca[i][6] <= num_nodes,
                "executor_forward: cell ", i, " has an invalid header");
    CellOutput out = run_cell(ca[i], sa, num_nodes, pp, prev, params, kernels);
    pp = std::move(prev);
    prev = std::move(out);
  }
  return classify(prev, params[params.size() - 2], params.back(), x.size(0), num_nodes);
}

std::vector<std::string> executor_kinds() { return std::vector<std::string>(kKindNames, kKindNames + kNumKinds); }

}  // namespace
}  // namespace executor
}  // namespace natfast

// A composite (autograd-transparent) operator: autograd records the ATen calls inside, on any device.
TORCH_LIBRARY_FRAGMENT(natfast, m) {
  m.def(
      "executor_forward(Tensor x, Tensor cells, Tensor slots, Tensor[] params, bool cpu_kernels=False) -> Tensor",
      &natfast::executor::executor_forward);
  // The op kinds this build executes, in the order of natfast.cell_plan.KINDS.
  m.def("executor_kinds() -> str[]", &natfast::executor::executor_kinds);
}
