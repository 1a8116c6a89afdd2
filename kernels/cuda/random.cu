// CUDA Philox draws: element i is computed from (seed, offset, i) by the same VG_HD functions as the
// CPU twin (kernels/random.h), so both devices fill a tensor with the same numbers.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/random.h"

namespace voxgrad::kernels::cuda {

namespace {

__global__ void uniform_kernel(float* __restrict__ y, std::int64_t n, std::uint64_t seed, std::uint64_t offset,
                               double low, double width) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = static_cast<float>(low + width * philox_uniform(seed, offset, i));
}

__global__ void normal_kernel(float* __restrict__ y, std::int64_t n, std::uint64_t seed, std::uint64_t offset,
                              double mean, double std) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = static_cast<float>(mean + std * philox_normal(seed, offset, i));
}

float* float32_draws(const char* what, DType t, void* y) {
  if (t != DType::Float32) VG_FAIL(what << ": " << dtype_name(t) << " has no CUDA kernels (float64 is CPU-only)");
  return static_cast<float*>(y);
}

}  // namespace

void rand_uniform(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double low, double high,
                  Stream s) {
  float* out = float32_draws("rand_uniform", t, y);
  if (n == 0) return;
  uniform_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(out, n, seed, offset, low, high - low);
  VG_CUDA_CHECK_LAUNCH();
}

void rand_normal(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double mean, double std,
                 Stream s) {
  float* out = float32_draws("rand_normal", t, y);
  if (n == 0) return;
  normal_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(out, n, seed, offset, mean, std);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
