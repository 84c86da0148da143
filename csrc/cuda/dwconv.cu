// Fused ReLU + depthwise convolution on CUDA: y = conv2d(relu(x), w, groups=C), 'same' padding
// dilation*(k-1)/2, k in {3, 5}. Forward, input gradient (gather form, no atomics) and weight
// gradient (per-block partial sums reduced in a fixed order), so every result is deterministic.
// Schemas: csrc/executor/schemas.cpp. Python front: natfast/ops/backends/cuda.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"

namespace natfast {
namespace cuda {
namespace {

struct ConvGeometry {
  int channels, height, width, out_height, out_width, stride, dilation, pad;
};

ConvGeometry geometry(const at::Tensor& x, int64_t kernel, int64_t stride, int64_t dilation) {
  const int pad = static_cast<int>(dilation * (kernel - 1) / 2);
  const int h = static_cast<int>(x.size(2)), w = static_cast<int>(x.size(3));
  // 'same' padding: out = (in - 1) / stride + 1
  return {static_cast<int>(x.size(1)), h, w, (h - 1) / static_cast<int>(stride) + 1,
          (w - 1) / static_cast<int>(stride) + 1, static_cast<int>(stride), static_cast<int>(dilation), pad};
}

template <typename scalar_t, int K>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               scalar_t* __restrict__ y, ConvGeometry g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int ow = i % g.out_width;
    const int oh = (i / g.out_width) % g.out_height;
    const int64_t plane = i / ((int64_t)g.out_width * g.out_height);  // n * C + c
    const int c = plane % g.channels;
    const scalar_t* xp = x + plane * g.height * g.width;
    const scalar_t* wp = w + c * K * K;
    acc_t acc = 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int ih = oh * g.stride - g.pad + kh * g.dilation;
      if (ih < 0 || ih >= g.height) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int iw = ow * g.stride - g.pad + kw * g.dilation;
        if (iw < 0 || iw >= g.width) continue;
        const acc_t v = static_cast<acc_t>(xp[ih * g.width + iw]);
        acc += (v > acc_t(0) ? v : acc_t(0)) * static_cast<acc_t>(wp[kh * K + kw]);
      }
    }
    y[i] = static_cast<scalar_t>(acc);
  }
}

// grad_x[n,c,ih,iw] = [x > 0] * sum over the taps whose output position lands on the grid.
template <typename scalar_t, int K>
__global__ void backward_input_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ w, scalar_t* __restrict__ grad_x,
                                      ConvGeometry g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    if (!(static_cast<acc_t>(x[i]) > acc_t(0))) {
      grad_x[i] = scalar_t(0);
      continue;
    }
    const int iw = i % g.width;
    const int ih = (i / g.width) % g.height;
    const int64_t plane = i / ((int64_t)g.width * g.height);
    const int c = plane % g.channels;
    const scalar_t* gp = grad_out + plane * g.out_height * g.out_width;
    const scalar_t* wp = w + c * K * K;
    acc_t acc = 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int th = ih + g.pad - kh * g.dilation;
      if (th < 0 || th % g.stride) continue;
      const int oh = th / g.stride;
      if (oh >= g.out_height) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int tw = iw + g.pad - kw * g.dilation;
        if (tw < 0 || tw % g.stride) continue;
        const int ow = tw / g.stride;
        if (ow >= g.out_width) continue;
        acc += static_cast<acc_t>(gp[oh * g.out_width + ow]) * static_cast<acc_t>(wp[kh * K + kw]);
      }
    }
    grad_x[i] = static_cast<scalar_t>(acc);
  }
}

// Block (c, s) sums grad_out * relu(x) over its share of the (n, oh, ow) positions of channel c
// for all K*K taps and writes partial[c, s, tap]; the host sums over s (a fixed-order reduction).
template <typename scalar_t, int K>
__global__ void backward_weight_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                                       at::opmath_type<scalar_t>* __restrict__ partial, ConvGeometry g,
                                       int batch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int c = blockIdx.x, s = blockIdx.y, segments = gridDim.y;
  const int64_t out_plane = (int64_t)g.out_height * g.out_width;
  const int64_t positions = batch * out_plane;
  acc_t acc[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) acc[t] = 0;
  for (int64_t e = (int64_t)s * blockDim.x + threadIdx.x; e < positions; e += (int64_t)segments * blockDim.x) {
    const int n = e / out_plane;
    const int oh = (e % out_plane) / g.out_width;
    const int ow = e % g.out_width;
    const int64_t plane = (int64_t)n * g.channels + c;
    const acc_t go = static_cast<acc_t>(grad_out[plane * out_plane + oh * g.out_width + ow]);
    const scalar_t* xp = x + plane * g.height * g.width;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int ih = oh * g.stride - g.pad + kh * g.dilation;
      if (ih < 0 || ih >= g.height) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int iw = ow * g.stride - g.pad + kw * g.dilation;
        if (iw < 0 || iw >= g.width) continue;
        const acc_t v = static_cast<acc_t>(xp[ih * g.width + iw]);
        acc[kh * K + kw] += go * (v > acc_t(0) ? v : acc_t(0));
      }
    }
  }
  __shared__ acc_t warp_sums[kMaxThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int t = 0; t < K * K; ++t) {
    const acc_t v = warp_reduce_sum(acc[t]);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = 0;
      for (int i = 0; i < warps; ++i) total += warp_sums[i];
      partial[((int64_t)c * segments + s) * K * K + t] = total;
    }
    __syncthreads();
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(), "cuda_dwconv: x and weight must be CUDA tensors");
  TORCH_CHECK(x.dim() == 4, "cuda_dwconv: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3) && (weight.size(2) == 3 || weight.size(2) == 5),
              "cuda_dwconv: weight must be (C, 1, k, k) with k in {3, 5}, got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "cuda_dwconv: x and weight dtypes differ");
  TORCH_CHECK(stride >= 1 && dilation >= 1, "cuda_dwconv: stride and dilation must be positive");
}

// Calls body.template operator()<K>() with K the compile-time kernel size.
template <typename Body>
void with_kernel_size(int64_t k, Body&& body) {
  if (k == 3) {
    body(std::integral_constant<int, 3>());
  } else {
    body(std::integral_constant<int, 5>());
  }
}

at::Tensor dwconv_forward(const at::Tensor& x_in, const at::Tensor& weight_in, int64_t stride, int64_t dilation) {
  check_inputs(x_in, weight_in, stride, dilation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const ConvGeometry g = geometry(x, weight.size(2), stride, dilation);
  at::Tensor y = at::empty({x.size(0), x.size(1), g.out_height, g.out_width}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cuda_dwconv_forward", [&] {
    with_kernel_size(weight.size(2), [&](auto k) {
      forward_kernel<scalar_t, decltype(k)::value><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g, total);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor dwconv_backward_input(const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
                                 int64_t stride, int64_t dilation) {
  check_inputs(x_in, weight_in, stride, dilation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), grad_out = grad_out_in.contiguous();
  const ConvGeometry g = geometry(x, weight.size(2), stride, dilation);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({x.size(0), x.size(1), g.out_height, g.out_width}),
              "cuda_dwconv_backward_input: grad_out has shape ", grad_out.sizes());
  at::Tensor grad_x = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cuda_dwconv_backward_input", [&] {
    with_kernel_size(weight.size(2), [&](auto k) {
      backward_input_kernel<scalar_t, decltype(k)::value>
          <<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
              grad_x.data_ptr<scalar_t>(), g, total);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_x;
}

at::Tensor dwconv_backward_weight(const at::Tensor& grad_out_in, const at::Tensor& x_in, int64_t kernel_size,
                                  int64_t stride, int64_t dilation) {
  TORCH_CHECK(kernel_size == 3 || kernel_size == 5, "cuda_dwconv_backward_weight: kernel_size must be 3 or 5");
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 4, "cuda_dwconv_backward_weight: x must be a 4-d CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), grad_out = grad_out_in.contiguous();
  const ConvGeometry g = geometry(x, kernel_size, stride, dilation);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({x.size(0), x.size(1), g.out_height, g.out_width}),
              "cuda_dwconv_backward_weight: grad_out has shape ", grad_out.sizes());
  const int64_t positions = x.size(0) * (int64_t)g.out_height * g.out_width;
  // Enough blocks to fill the GPU (about 4 per SM), never more than the positions need.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (4 * sms + g.channels - 1) / std::max(g.channels, 1);
  const int segments = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, (positions + kThreads - 1) / kThreads)));
  const auto acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor partial = at::empty({g.channels, segments, kernel_size * kernel_size}, x.options().dtype(acc_type));
  if (positions > 0 && g.channels > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cuda_dwconv_backward_weight", [&] {
      with_kernel_size(kernel_size, [&](auto k) {
        backward_weight_kernel<scalar_t, decltype(k)::value>
            <<<dim3(g.channels, segments), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                partial.data_ptr<at::opmath_type<scalar_t>>(), g, static_cast<int>(x.size(0)));
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    partial.zero_();
  }
  return partial.sum(1).view({g.channels, 1, kernel_size, kernel_size}).to(x.scalar_type());
}

}  // namespace
}  // namespace cuda
}  // namespace natfast

TORCH_LIBRARY_IMPL(natfast, CUDA, m) {
  m.impl("cuda_dwconv_forward", &natfast::cuda::dwconv_forward);
  m.impl("cuda_dwconv_backward_input", &natfast::cuda::dwconv_backward_input);
  m.impl("cuda_dwconv_backward_weight", &natfast::cuda::dwconv_backward_weight);
}
