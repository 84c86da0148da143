// Schemas of the CUDA-only operators (kernels in csrc/cuda). Defined in this always-compiled file so
// that torch.ops.natfast.<name> exists on every build; a CPU-only build simply has no kernel for them
// (natfast/ops/backends/cuda.py checks for a CUDA kernel before it registers the backend).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(natfast, m) {
  // natfast.ops.gcn.gcn_policy_logits for a batch of graphs: (logits, h1, h2); h1, h2 are the two
  // graph-convolution outputs the backward needs.
  m.def("cuda_gcn_forward(Tensor adj, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor wh, "
        "Tensor bh) -> (Tensor, Tensor, Tensor)");
  // Gradients (adj, x, w1, b1, w2, b2, wh, bh) given d loss / d logits and the forward's h1, h2.
  m.def("cuda_gcn_backward(Tensor grad_logits, Tensor adj, Tensor x, Tensor w1, Tensor w2, Tensor wh, Tensor h1, "
        "Tensor h2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
