// CUDA optimizer updates: grid-stride loops over the VG_HD math in kernels/optim.h (float).
#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/optim.h"

namespace voxgrad::kernels::cuda {

namespace {

__device__ std::int64_t first_index() { return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

// The step's scalars travel by value in the kernel's parameter space.
__global__ void sgd_step_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf,
                                std::int64_t n, SgdStep<float> s) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride())
    sgd_update(p[i], g[i], buf == nullptr ? nullptr : buf + i, s);
}

__global__ void adam_step_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                 float* __restrict__ v, std::int64_t n, AdamStep<float> s) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) adam_update(p[i], g[i], m[i], v[i], s);
}

}  // namespace

void sgd_step(float* p, const float* g, float* buf, std::int64_t n, const SgdStep<float>& s, Stream stream) {
  if (n == 0) return;
  sgd_step_kernel<<<grid_for(n), kBlock, 0, native(stream)>>>(p, g, buf, n, s);
  VG_CUDA_CHECK_LAUNCH();
}

void adam_step(float* p, const float* g, float* m, float* v, std::int64_t n, const AdamStep<float>& s,
               Stream stream) {
  if (n == 0) return;
  adam_step_kernel<<<grid_for(n), kBlock, 0, native(stream)>>>(p, g, m, v, n, s);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
