// The compiled sampled-path executor: one architecture's forward through the supernet's shared
// weights (stem -> cells -> classifier) in C++, with plain ATen calls that autograd records, so the
// backward needs nothing extra and no op goes through Python dispatch. It computes exactly what
// natfast/supernet.py `Supernet.forward(x, genotype)` computes:
//   * a value that is known to be zero (a node without live inputs) is never computed or stored;
//   * cell inputs built from a subset of the previous cell's nodes keep only the matching input
//     channels of the preprocessing weights (ReLU and 1x1 convolutions map zeros to zeros);
//   * nodes that do not reach the cell output and null edges are skipped;
//   * BN is affine=False with batch statistics (the supernet's search-time BN).
// With `cpu_kernels` (a CPU run where the Python path would use natfast's C++ CPU kernels), the ops
// run those kernels (executor/cpu_autograd.h), else ATen's.
// Python front and parameter order: natfast/executor.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "executor/cpu_autograd.h"

namespace natfast {
namespace executor {
namespace {

// Op ids are positions in natfast.ops.layers.OPERATIONS.
enum Op : int64_t {
  kMaxPool3, kMaxPool5, kAvgPool3, kAvgPool5, kSkip, kSepConv3, kSepConv5,
  kDilConv3, kDilConv5, kConv1, kConv3, kConv5, kNull, kNumOps
};

using cpu_autograd::kEps;

// Which kernels run the ops: natfast's CPU kernels (where the tensor suits them) or ATen's.
struct Kernels {
  bool cpu = false;
  bool take(const at::Tensor& x) const { return cpu && cpu_autograd::takes(x); }
  // BN with one value per channel is an error either way; ATen's says so.
  bool take_bn(const at::Tensor& x) const { return take(x) && x.size(0) * x.size(2) * x.size(3) > 1; }
};

at::Tensor batch_norm(const at::Tensor& x, const Kernels& k) {
  if (k.take_bn(x)) return cpu_autograd::batch_norm(x);
  return at::batch_norm(x, {}, {}, {}, {}, /*training=*/true, /*momentum=*/0.1, kEps, /*cudnn_enabled=*/true);
}

// The supernet's parameters for this architecture, consumed in the order natfast/executor.py packs them.
class ParamCursor {
 public:
  explicit ParamCursor(const std::vector<at::Tensor>& params) : params_(params) {}
  const at::Tensor& take() {
    TORCH_CHECK(next_ < params_.size(), "executor_forward: the parameter list is too short for this architecture");
    return params_[next_++];
  }
  size_t position() const { return next_; }
  void seek(size_t position) { next_ = position; }
  size_t size() const { return params_.size(); }

 private:
  const std::vector<at::Tensor>& params_;
  size_t next_ = 0;
};

int64_t param_count(int64_t op, int64_t stride) {
  switch (op) {
    case kSkip: return stride == 1 ? 0 : 2;  // identity, or FactorizedReduce (conv_a, conv_b)
    case kSepConv3: case kSepConv5: return 4;  // first (depthwise, pointwise), second (same)
    case kDilConv3: case kDilConv5: return 2;  // depthwise, pointwise
    case kConv1: case kConv3: case kConv5: return 1;
    default: return 0;  // pools, null
  }
}

at::Tensor relu_dwconv(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t dilation, const Kernels& k) {
  if (k.take(x)) return cpu_autograd::relu_dwconv(x, w, stride, dilation);
  const int64_t size = w.size(-1);
  return at::conv2d(at::relu(x), w, {}, stride, dilation * (size - 1) / 2, dilation, x.size(1));
}

// BN of conv1x1(relu?(cat(parts))): the pointwise end of a DilConv, or a cell's preprocessing.
at::Tensor conv1x1_bn(const std::vector<at::Tensor>& parts, const at::Tensor& w, bool relu_input, const Kernels& k) {
  if (k.take_bn(parts[0])) return cpu_autograd::conv1x1_bn(parts, w, relu_input);
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
  if (k.take(x) && cpu_autograd::winograd_fits(x, w, stride))
    return batch_norm(cpu_autograd::relu_conv3x3_winograd(x, w), k);
  return batch_norm(at::conv2d(at::relu(x), w, {}, stride, size / 2), k);
}

at::Tensor pool_bn(const at::Tensor& x, bool max, int64_t size, int64_t stride, const Kernels& k) {
  const int64_t out_pixels = ((x.size(2) - 1) / stride + 1) * ((x.size(3) - 1) / stride + 1);
  if (k.take(x) && x.size(0) * out_pixels > 1) return cpu_autograd::pool_bn(x, max ? "max" : "avg", size, stride);
  const at::Tensor pooled = max ? at::max_pool2d(x, size, stride, size / 2)
                                : at::avg_pool2d(x, size, stride, size / 2, /*ceil_mode=*/false,
                                                 /*count_include_pad=*/false);
  return batch_norm(pooled, k);
}

at::Tensor run_op(int64_t op, const at::Tensor& x, int64_t stride, ParamCursor& p, const Kernels& k) {
  switch (op) {
    case kMaxPool3: case kMaxPool5:
      return pool_bn(x, true, op == kMaxPool3 ? 3 : 5, stride, k);
    case kAvgPool3: case kAvgPool5:
      return pool_bn(x, false, op == kAvgPool3 ? 3 : 5, stride, k);
    case kSkip: {
      if (stride == 1) return x;
      const at::Tensor& wa = p.take();
      return factorized_reduce({x}, wa, p.take(), k);
    }
    case kSepConv3: case kSepConv5: {
      const at::Tensor& dw1 = p.take();
      const at::Tensor& pw1 = p.take();
      const at::Tensor& dw2 = p.take();
      const at::Tensor& pw2 = p.take();
      return dil_conv(dil_conv(x, dw1, pw1, stride, 1, k), dw2, pw2, 1, 1, k);
    }
    case kDilConv3: case kDilConv5: {
      const at::Tensor& dw = p.take();
      return dil_conv(x, dw, p.take(), stride, 2, k);
    }
    case kConv1: case kConv3: case kConv5:
      return relu_conv_bn(x, p.take(), stride, k);
    default:
      TORCH_CHECK(false, "executor_forward: op id ", op, " cannot be executed");
  }
}

// A cell's (or the stem's) output: its output nodes in concat order, an undefined tensor standing
// for known zeros; `blocks` holds each node's position among the B node blocks (empty: the stem,
// whose single value covers all channels).
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

// The non-zero values of a cell output (its nodes, not concatenated) and their blocks.
std::pair<std::vector<at::Tensor>, std::vector<int64_t>> nonzero_parts(const CellOutput& out) {
  std::vector<at::Tensor> parts;
  std::vector<int64_t> blocks;
  for (size_t i = 0; i < out.values.size(); ++i) {
    if (!out.values[i].defined()) continue;
    parts.push_back(out.values[i]);
    if (!out.blocks.empty()) blocks.push_back(out.blocks[i]);
  }
  return {parts, blocks};
}

// ReLUConvBN(1x1) or FactorizedReduce on a cell input (its weights always consumed from the cursor).
// The nodes go in as parts: the CPU kernel reads them in place; ATen's path concatenates them.
at::Tensor preprocess(const CellOutput& in, bool needed, bool factorized, ParamCursor& p, int64_t num_nodes,
                      const Kernels& k) {
  std::vector<at::Tensor> weights = {p.take()};
  if (factorized) weights.push_back(p.take());
  if (!needed) return at::Tensor();
  auto [parts, blocks] = nonzero_parts(in);
  if (parts.empty()) return at::Tensor();
  if (!in.blocks.empty() && !is_all_blocks(blocks, num_nodes)) {
    const int64_t width = parts[0].size(1);
    for (auto& w : weights) w = select_blocks(w, blocks, width, 1);
  }
  return factorized ? factorized_reduce(parts, weights[0], weights[1], k) : conv1x1_bn(parts, weights[0], true, k);
}

struct Edge {
  int64_t op, from, to;
};

CellOutput run_cell(const std::vector<Edge>& edges, const std::vector<int64_t>& outputs, int64_t num_nodes,
                    bool reduction, bool reduction_prev, const CellOutput& in_pp, const CellOutput& in_p,
                    ParamCursor& p, const Kernels& k) {
  // Live nodes: those reaching an output through non-null edges (targets visited high to low).
  std::vector<char> live(num_nodes + 2, 0);
  for (int64_t s : outputs) live[s] = 1;
  for (int64_t t = num_nodes + 1; t >= 2; --t) {
    if (!live[t]) continue;
    for (const Edge& e : edges)
      if (e.to == t && e.op != kNull) live[e.from] = 1;
  }
  std::vector<at::Tensor> nodes(num_nodes + 2);
  nodes[0] = preprocess(in_pp, live[0], reduction_prev, p, num_nodes, k);
  nodes[1] = preprocess(in_p, live[1], false, p, num_nodes, k);
  // Every non-null edge owns a slice of the parameter list, executed or not.
  std::vector<size_t> offsets(edges.size());
  for (size_t j = 0; j < edges.size(); ++j) {
    offsets[j] = p.position();
    const int64_t stride = reduction && edges[j].from < 2 ? 2 : 1;
    p.seek(p.position() + param_count(edges[j].op, stride));
  }
  const size_t after_cell = p.position();
  TORCH_CHECK(after_cell <= p.size(), "executor_forward: the parameter list is too short for this architecture");
  for (int64_t t = 2; t <= num_nodes + 1; ++t) {
    if (!live[t]) continue;
    at::Tensor total;
    std::vector<std::pair<size_t, at::Tensor>> done;  // an edge repeated (same op and input) is run once
    for (size_t j = 0; j < edges.size(); ++j) {
      const Edge& e = edges[j];
      if (e.to != t || e.op == kNull || !nodes[e.from].defined()) continue;
      at::Tensor y;
      for (const auto& [k, value] : done)
        if (edges[k].op == e.op && edges[k].from == e.from) y = value;
      if (!y.defined()) {
        p.seek(offsets[j]);
        y = run_op(e.op, nodes[e.from], reduction && e.from < 2 ? 2 : 1, p, k);
        done.emplace_back(j, y);
      }
      total = total.defined() ? total + y : y;
    }
    nodes[t] = total;
  }
  p.seek(after_cell);
  CellOutput out;
  for (int64_t s : outputs) {
    out.values.push_back(nodes[s]);
    out.blocks.push_back(s - 2);
  }
  return out;
}

at::Tensor classify(const CellOutput& out, const at::Tensor& weight, const at::Tensor& bias, int64_t batch,
                    int64_t num_nodes) {
  std::vector<at::Tensor> pooled;
  std::vector<int64_t> blocks;
  for (size_t i = 0; i < out.values.size(); ++i) {
    if (!out.values[i].defined()) continue;
    pooled.push_back(out.values[i].mean({2, 3}));
    blocks.push_back(out.blocks[i]);
  }
  if (pooled.empty()) return bias.expand({batch, bias.size(0)});
  const at::Tensor features = pooled.size() == 1 ? pooled[0] : at::cat(pooled, 1);
  const at::Tensor w = is_all_blocks(blocks, num_nodes) ? weight : select_blocks(weight, blocks, pooled[0].size(1), 1);
  return at::linear(features, w, bias);
}

at::Tensor executor_forward(const at::Tensor& x, const at::Tensor& arch_edges, const at::Tensor& arch_outputs,
                            at::IntArrayRef reduction_cells, at::TensorList params_list, bool cpu_kernels) {
  TORCH_CHECK(arch_edges.dim() == 3 && arch_edges.size(2) == 3 && arch_edges.scalar_type() == at::kLong &&
                  arch_edges.device().is_cpu(),
              "executor_forward: edges must be a CPU int64 tensor (layers, edges, 3) of (op, from, to)");
  TORCH_CHECK(arch_outputs.dim() == 2 && arch_outputs.size(0) == arch_edges.size(0) &&
                  arch_outputs.scalar_type() == at::kLong && arch_outputs.device().is_cpu(),
              "executor_forward: outputs must be a CPU int64 tensor (layers, B) of output nodes, -1 padded");
  const int64_t layers = arch_edges.size(0), num_nodes = arch_outputs.size(1);
  TORCH_CHECK(layers > 0, "executor_forward: the architecture has no cells");
  const auto e = arch_edges.contiguous(), o = arch_outputs.contiguous();
  const auto ea = e.accessor<int64_t, 3>();
  const auto oa = o.accessor<int64_t, 2>();
  const std::vector<at::Tensor> params(params_list.begin(), params_list.end());
  ParamCursor p(params);
  const Kernels kernels{cpu_kernels};

  const at::Tensor& stem_weight = p.take();
  const at::Tensor stem = batch_norm(at::conv2d(x, stem_weight, {}, 1, 1), kernels);
  CellOutput pp{{stem}, {}}, prev{{stem}, {}};
  bool reduction_prev = false;
  for (int64_t i = 0; i < layers; ++i) {
    const bool reduction = std::find(reduction_cells.begin(), reduction_cells.end(), i) != reduction_cells.end();
    std::vector<Edge> edges;
    for (int64_t j = 0; j < e.size(1); ++j) {
      const Edge edge{ea[i][j][0], ea[i][j][1], ea[i][j][2]};
      TORCH_CHECK(edge.op >= 0 && edge.op < kNumOps && edge.from >= 0 && edge.from < edge.to &&
                      edge.to <= num_nodes + 1,
                  "executor_forward: cell ", i, " has an invalid edge (", edge.op, ", ", edge.from, ", ", edge.to, ")");
      edges.push_back(edge);
    }
    std::vector<int64_t> outputs;
    for (int64_t j = 0; j < num_nodes; ++j) {
      const int64_t s = oa[i][j];
      if (s < 0) continue;
      TORCH_CHECK(s >= 2 && s <= num_nodes + 1, "executor_forward: cell ", i, " outputs node ", s);
      outputs.push_back(s);
    }
    CellOutput out = run_cell(edges, outputs, num_nodes, reduction, reduction_prev, pp, prev, p, kernels);
    pp = std::move(prev);
    prev = std::move(out);
    reduction_prev = reduction;
  }
  const at::Tensor& weight = p.take();
  const at::Tensor& bias = p.take();
  TORCH_CHECK(p.position() == p.size(), "executor_forward: ", p.size(), " parameters given, the architecture uses ",
              p.position());
  return classify(prev, weight, bias, x.size(0), num_nodes);
}

}  // namespace
}  // namespace executor
}  // namespace natfast

// A composite (autograd-transparent) operator: autograd records the ATen calls inside, on any device.
TORCH_LIBRARY_FRAGMENT(natfast, m) {
  m.def(
      "executor_forward(Tensor x, Tensor edges, Tensor outputs, int[] reduction_cells, Tensor[] params, "
      "bool cpu_kernels=False) -> Tensor",
      &natfast::executor::executor_forward);
}
