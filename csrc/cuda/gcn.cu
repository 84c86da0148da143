// The GCN policy's message passing for a batch of B small graphs (natfast/ops/gcn.py):
//   H1 = relu(A (X W1) + b1),  H2 = A (H1 W2) + b2,  logits = H2 Wh + bh.
// One block per graph keeps the graph's activations in shared memory, so the whole policy step is
// one launch instead of six batched matmuls. Weight and bias gradients are written per graph and
// summed on the host (a fixed-order reduction: deterministic, no atomics).
// Schemas: csrc/executor/schemas.cpp. Python front: natfast/ops/backends/cuda.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/launch.cuh"

namespace natfast {
namespace cuda {
namespace {

// A strided read-only matrix view: element (r, c) is data[r * row_stride + c * col_stride].
template <typename T>
struct View {
  const T* data;
  int row_stride, col_stride;
  __device__ T operator()(int r, int c) const { return data[r * row_stride + c * col_stride]; }
};

template <typename T>
__device__ View<T> rows(const T* data, int cols) { return {data, cols, 1}; }          // row-major
template <typename T>
__device__ View<T> transposed(const T* data, int cols) { return {data, 1, cols}; }    // of row-major

// out[m][k] (row-major, M x K) = sum_j a(m, j) b(j, k) (+ bias[k]) (relu), for the whole block.
template <typename T>
__device__ void matmul(int M, int J, int K, View<T> a, View<T> b, T* out, const T* bias = nullptr,
                       bool relu = false, bool accumulate = false) {
  for (int i = threadIdx.x; i < M * K; i += blockDim.x) {
    const int m = i / K, k = i % K;
    T acc = bias ? bias[k] : T(0);
    for (int j = 0; j < J; ++j) acc += a(m, j) * b(j, k);
    if (relu && !(acc > T(0))) acc = T(0);
    out[i] = accumulate ? out[i] + acc : acc;
  }
  __syncthreads();
}


template <typename T>
__device__ void load(T* dst, const T* src, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
  __syncthreads();
}

// Column sums of a row-major M x K matrix (the per-graph bias gradient).
template <typename T>
__device__ void column_sums(int M, int K, const T* in, T* out) {
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    T acc = 0;
    for (int m = 0; m < M; ++m) acc += in[m * K + k];
    out[k] = acc;
  }
}

struct Sizes {
  int nodes, features, hidden1, hidden2, outputs;
};

template <typename T>
__global__ void forward_kernel(const T* __restrict__ adj, const T* __restrict__ x, const T* __restrict__ w1,
                               const T* __restrict__ b1, const T* __restrict__ w2, const T* __restrict__ b2,
                               const T* __restrict__ wh, const T* __restrict__ bh, T* __restrict__ logits,
                               T* __restrict__ h1_out, T* __restrict__ h2_out, Sizes s) {
  extern __shared__ unsigned char smem_bytes[];
  T* smem = reinterpret_cast<T*>(smem_bytes);
  const int n = s.nodes, g = blockIdx.x;
  T* a = smem;                          // n x n
  T* feat = a + n * n;                  // n x features
  T* p1 = feat + n * s.features;        // n x hidden1: X W1
  T* h1 = p1 + n * s.hidden1;           // n x hidden1
  T* p2 = h1 + n * s.hidden1;           // n x hidden2: H1 W2
  load(a, adj + (int64_t)g * n * n, n * n);
  load(feat, x + (int64_t)g * n * s.features, n * s.features);
  matmul<T>(n, s.features, s.hidden1, rows(feat, s.features), rows(w1, s.hidden1), p1);
  matmul<T>(n, n, s.hidden1, rows(a, n), rows(p1, s.hidden1), h1, b1, /*relu=*/true);
  matmul<T>(n, s.hidden1, s.hidden2, rows(h1, s.hidden1), rows(w2, s.hidden2), p2);
  T* h2 = h2_out + (int64_t)g * n * s.hidden2;
  matmul<T>(n, n, s.hidden2, rows(a, n), rows(p2, s.hidden2), h2, b2);
  matmul<T>(n, s.hidden2, s.outputs, View<T>{h2, s.hidden2, 1}, rows(wh, s.outputs),
            logits + (int64_t)g * n * s.outputs, bh);
  for (int i = threadIdx.x; i < n * s.hidden1; i += blockDim.x) h1_out[(int64_t)g * n * s.hidden1 + i] = h1[i];
}

// Per graph: d adj, d x, and the graph's share of every weight and bias gradient.
template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_logits, const T* __restrict__ adj,
                                const T* __restrict__ x, const T* __restrict__ w1, const T* __restrict__ w2,
                                const T* __restrict__ wh, const T* __restrict__ h1_in, const T* __restrict__ h2_in,
                                T* __restrict__ grad_adj, T* __restrict__ grad_x, T* __restrict__ part_w1,
                                T* __restrict__ part_b1, T* __restrict__ part_w2, T* __restrict__ part_b2,
                                T* __restrict__ part_wh, Sizes s) {
  extern __shared__ unsigned char smem_bytes[];
  T* smem = reinterpret_cast<T*>(smem_bytes);
  const int n = s.nodes, g = blockIdx.x;
  const int H1 = s.hidden1, H2 = s.hidden2, F = s.features, O = s.outputs;
  T* a = smem;                 // n x n
  T* da = a + n * n;           // n x n
  T* feat = da + n * n;        // n x F
  T* h1 = feat + n * F;        // n x H1
  T* dz1 = h1 + n * H1;        // n x H1: d (A P1 + b1)
  T* p1 = dz1 + n * H1;        // n x H1: X W1, later d P1
  T* go = p1 + n * H1;         // n x O
  T* dh2 = go + n * O;         // n x H2
  T* p2 = dh2 + n * H2;        // n x H2: H1 W2
  T* dp2 = p2 + n * H2;        // n x H2
  load(a, adj + (int64_t)g * n * n, n * n);
  load(feat, x + (int64_t)g * n * F, n * F);
  load(h1, h1_in + (int64_t)g * n * H1, n * H1);
  load(go, grad_logits + (int64_t)g * n * O, n * O);
  const T* h2 = h2_in + (int64_t)g * n * H2;
  // Head: d Wh = H2^T G, d H2 = G Wh^T.
  matmul<T>(H2, n, O, View<T>{h2, 1, H2}, rows(go, O), part_wh + (int64_t)g * H2 * O);
  matmul<T>(n, O, H2, rows(go, O), transposed(wh, O), dh2);
  column_sums(n, H2, dh2, part_b2 + (int64_t)g * H2);
  // Second convolution: H2 = A P2 + b2 with P2 = H1 W2.
  matmul<T>(n, H1, H2, rows(h1, H1), rows(w2, H2), p2);
  matmul<T>(n, H2, n, rows(dh2, H2), transposed(p2, H2), da);   // d A  = dH2 P2^T
  matmul<T>(n, n, H2, transposed(a, n), rows(dh2, H2), dp2);     // d P2 = A^T dH2
  matmul<T>(H1, n, H2, transposed(h1, H1), rows(dp2, H2), part_w2 + (int64_t)g * H1 * H2);
  matmul<T>(n, H2, H1, rows(dp2, H2), transposed(w2, H2), dz1);  // d H1 = dP2 W2^T
  // Through the ReLU: H1 > 0 exactly where A P1 + b1 > 0.
  for (int i = threadIdx.x; i < n * H1; i += blockDim.x)
    if (!(h1[i] > T(0))) dz1[i] = T(0);
  __syncthreads();
  column_sums(n, H1, dz1, part_b1 + (int64_t)g * H1);
  // First convolution: H1 = relu(A P1 + b1) with P1 = X W1.
  matmul<T>(n, F, H1, rows(feat, F), rows(w1, H1), p1);
  matmul<T>(n, H1, n, rows(dz1, H1), transposed(p1, H1), da, nullptr, false, /*accumulate=*/true);
  matmul<T>(n, n, H1, transposed(a, n), rows(dz1, H1), p1);      // p1 now holds d P1 = A^T dZ1
  matmul<T>(F, n, H1, transposed(feat, F), rows(p1, H1), part_w1 + (int64_t)g * F * H1);
  matmul<T>(n, H1, F, rows(p1, H1), transposed(w1, H1), grad_x + (int64_t)g * n * F);
  for (int i = threadIdx.x; i < n * n; i += blockDim.x) grad_adj[(int64_t)g * n * n + i] = da[i];
}

Sizes sizes_of(const at::Tensor& adj, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
               const at::Tensor& wh) {
  TORCH_CHECK(adj.dim() == 3 && adj.size(1) == adj.size(2), "cuda_gcn: adj must be (B, N, N), got ", adj.sizes());
  TORCH_CHECK(x.dim() == 3 && x.size(0) == adj.size(0) && x.size(1) == adj.size(1),
              "cuda_gcn: x must be (B, N, F) matching adj, got ", x.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(0) == x.size(2), "cuda_gcn: w1 must be (F, H1), got ", w1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == w1.size(1), "cuda_gcn: w2 must be (H1, H2), got ", w2.sizes());
  TORCH_CHECK(wh.dim() == 2 && wh.size(0) == w2.size(1), "cuda_gcn: wh must be (H2, O), got ", wh.sizes());
  for (const at::Tensor* t : {&adj, &x, &w1, &w2, &wh}) {
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == x.scalar_type(), "cuda_gcn: all tensors must be CUDA and of one dtype");
  }
  return {static_cast<int>(adj.size(1)), static_cast<int>(x.size(2)), static_cast<int>(w1.size(1)),
          static_cast<int>(w2.size(1)), static_cast<int>(wh.size(1))};
}

// Shared memory per block, in elements; natfast/ops/backends/cuda.py mirrors these to decline
// shapes that do not fit (GCN_SHARED_LIMIT there).
int64_t forward_shared(const Sizes& s) { return (int64_t)s.nodes * (s.nodes + s.features + 2 * s.hidden1 + s.hidden2); }
int64_t backward_shared(const Sizes& s) {
  return (int64_t)s.nodes * (2 * s.nodes + s.features + 3 * s.hidden1 + s.outputs + 3 * s.hidden2);
}

void check_shared(int64_t bytes) {
  TORCH_CHECK(bytes <= 48 * 1024, "cuda_gcn: the graphs need ", bytes,
              " bytes of shared memory per block, more than 48 KiB; use another backend for this size");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gcn_forward(const at::Tensor& adj_in, const at::Tensor& x_in,
                                                           const at::Tensor& w1_in, const at::Tensor& b1_in,
                                                           const at::Tensor& w2_in, const at::Tensor& b2_in,
                                                           const at::Tensor& wh_in, const at::Tensor& bh_in) {
  const Sizes s = sizes_of(adj_in, x_in, w1_in, w2_in, wh_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor adj = adj_in.contiguous(), x = x_in.contiguous(), w1 = w1_in.contiguous(),
                   b1 = b1_in.contiguous(), w2 = w2_in.contiguous(), b2 = b2_in.contiguous(),
                   wh = wh_in.contiguous(), bh = bh_in.contiguous();
  TORCH_CHECK(b1.numel() == s.hidden1 && b2.numel() == s.hidden2 && bh.numel() == s.outputs,
              "cuda_gcn_forward: bias sizes do not match the weights");
  const int64_t graphs = adj.size(0);
  at::Tensor logits = at::empty({graphs, s.nodes, s.outputs}, x.options());
  at::Tensor h1 = at::empty({graphs, s.nodes, s.hidden1}, x.options());
  at::Tensor h2 = at::empty({graphs, s.nodes, s.hidden2}, x.options());
  if (graphs == 0) return {logits, h1, h2};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cuda_gcn_forward", [&] {
    const int64_t bytes = forward_shared(s) * sizeof(scalar_t);
    check_shared(bytes);
    forward_kernel<scalar_t><<<graphs, kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
        adj.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(),
        w2.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), wh.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>(),
        logits.data_ptr<scalar_t>(), h1.data_ptr<scalar_t>(), h2.data_ptr<scalar_t>(), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {logits, h1, h2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gcn_backward(
    const at::Tensor& grad_in, const at::Tensor& adj_in, const at::Tensor& x_in, const at::Tensor& w1_in,
    const at::Tensor& w2_in, const at::Tensor& wh_in, const at::Tensor& h1_in, const at::Tensor& h2_in) {
  const Sizes s = sizes_of(adj_in, x_in, w1_in, w2_in, wh_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad = grad_in.contiguous(), adj = adj_in.contiguous(), x = x_in.contiguous(),
                   w1 = w1_in.contiguous(), w2 = w2_in.contiguous(), wh = wh_in.contiguous(),
                   h1 = h1_in.contiguous(), h2 = h2_in.contiguous();
  const int64_t graphs = adj.size(0);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({graphs, s.nodes, s.outputs}), "cuda_gcn_backward: grad has shape ",
              grad.sizes());
  at::Tensor grad_adj = at::empty_like(adj), grad_x = at::empty_like(x);
  at::Tensor part_w1 = at::empty({graphs, s.features, s.hidden1}, x.options());
  at::Tensor part_b1 = at::empty({graphs, s.hidden1}, x.options());
  at::Tensor part_w2 = at::empty({graphs, s.hidden1, s.hidden2}, x.options());
  at::Tensor part_b2 = at::empty({graphs, s.hidden2}, x.options());
  at::Tensor part_wh = at::empty({graphs, s.hidden2, s.outputs}, x.options());
  if (graphs > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cuda_gcn_backward", [&] {
      const int64_t bytes = backward_shared(s) * sizeof(scalar_t);
      check_shared(bytes);
      backward_kernel<scalar_t><<<graphs, kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
          grad.data_ptr<scalar_t>(), adj.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(),
          w2.data_ptr<scalar_t>(), wh.data_ptr<scalar_t>(), h1.data_ptr<scalar_t>(), h2.data_ptr<scalar_t>(),
          grad_adj.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), part_w1.data_ptr<scalar_t>(),
          part_b1.data_ptr<scalar_t>(), part_w2.data_ptr<scalar_t>(), part_b2.data_ptr<scalar_t>(),
          part_wh.data_ptr<scalar_t>(), s);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_adj, grad_x, part_w1.sum(0), part_b1.sum(0), part_w2.sum(0),
          part_b2.sum(0), part_wh.sum(0), grad.sum(at::IntArrayRef{0, 1})};
}

}  // namespace
}  // namespace cuda
}  // namespace natfast

TORCH_LIBRARY_IMPL(natfast, CUDA, m) {
  m.impl("cuda_gcn_forward", &natfast::cuda::gcn_forward);
  m.impl("cuda_gcn_backward", &natfast::cuda::gcn_backward);
}
