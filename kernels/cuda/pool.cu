// CUDA 3D max and average pooling: one thread per output element (forward) or per input element
// (backward, a gather over covering windows, so no atomics), running the VG_HD functions of kernels/pool.h.
#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/pool.h"

namespace voxgrad::kernels::cuda {

namespace {

__global__ void max_pool3d_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                          std::int32_t* __restrict__ arg, PoolGeometry g) {
  const std::int64_t per = g.out_plane(), n = g.planes * per;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t ow = r % g.out[2], oh = (r / g.out[2]) % g.out[1], od = r / (g.out[2] * g.out[1]);
    y[i] = max_pool_at(x + p * g.in_plane(), g, od, oh, ow, arg + i);
  }
}

__global__ void max_pool3d_backward_kernel(const float* __restrict__ dy, const std::int32_t* __restrict__ arg,
                                           float* __restrict__ dx, PoolGeometry g) {
  const std::int64_t per = g.in_plane(), n = g.planes * per;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t w = r % g.in[2], h = (r / g.in[2]) % g.in[1], d = r / (g.in[2] * g.in[1]);
    dx[i] = max_pool_grad_at(dy + p * g.out_plane(), arg + p * g.out_plane(), g, d, h, w);
  }
}

__global__ void avg_pool3d_forward_kernel(const float* __restrict__ x, float* __restrict__ y, PoolGeometry g,
                                          bool count_include_pad) {
  const std::int64_t per = g.out_plane(), n = g.planes * per;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t ow = r % g.out[2], oh = (r / g.out[2]) % g.out[1], od = r / (g.out[2] * g.out[1]);
    y[i] = avg_pool_at(x + p * g.in_plane(), g, od, oh, ow, count_include_pad);
  }
}

__global__ void avg_pool3d_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, PoolGeometry g,
                                           bool count_include_pad) {
  const std::int64_t per = g.in_plane(), n = g.planes * per;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t w = r % g.in[2], h = (r / g.in[2]) % g.in[1], d = r / (g.in[2] * g.in[1]);
    dx[i] = avg_pool_grad_at(dy + p * g.out_plane(), g, d, h, w, count_include_pad);
  }
}

}  // namespace

void max_pool3d_forward(const float* x, float* y, std::int32_t* arg, const PoolGeometry& g, Stream s) {
  const std::int64_t n = g.planes * g.out_plane();
  if (n == 0) return;
  max_pool3d_forward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(x, y, arg, g);
  VG_CUDA_CHECK_LAUNCH();
}

void max_pool3d_backward(const float* dy, const std::int32_t* arg, float* dx, const PoolGeometry& g, Stream s) {
  const std::int64_t n = g.planes * g.in_plane();
  if (n == 0) return;
  max_pool3d_backward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(dy, arg, dx, g);
  VG_CUDA_CHECK_LAUNCH();
}

void avg_pool3d_forward(const float* x, float* y, const PoolGeometry& g, bool count_include_pad, Stream s) {
  const std::int64_t n = g.planes * g.out_plane();
  if (n == 0) return;
  avg_pool3d_forward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(x, y, g, count_include_pad);
  VG_CUDA_CHECK_LAUNCH();
}

void avg_pool3d_backward(const float* dy, float* dx, const PoolGeometry& g, bool count_include_pad, Stream s) {
  const std::int64_t n = g.planes * g.in_plane();
  if (n == 0) return;
  avg_pool3d_backward_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(dy, dx, g, count_include_pad);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
