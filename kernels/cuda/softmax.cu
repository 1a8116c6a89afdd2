// CUDA softmax and log-softmax over (outer, classes, inner): one thread per (outer, inner)
// position running the VG_HD distribution functions of kernels/softmax.h.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/softmax.h"

namespace voxgrad::kernels::cuda {

namespace {

// Consecutive threads take consecutive inner indices, so each class's loads coalesce.
__global__ void softmax_forward_kernel(const float* __restrict__ x, float* __restrict__ y, std::int64_t outer,
                                       std::int64_t classes, std::int64_t inner, bool log_space) {
  const std::int64_t positions = outer * inner;
  for (std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < positions;
       p += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t o = p / inner, j = p - o * inner;
    const std::int64_t base = o * classes * inner + j;
    softmax_position_forward(x + base, y + base, classes, inner, log_space);
  }
}

__global__ void softmax_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx, std::int64_t outer, std::int64_t classes,
                                        std::int64_t inner, bool log_space) {
  const std::int64_t positions = outer * inner;
  for (std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < positions;
       p += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t o = p / inner, j = p - o * inner;
    const std::int64_t base = o * classes * inner + j;
    softmax_position_backward(y + base, dy + base, dx + base, classes, inner, log_space);
  }
}

}  // namespace

void softmax_forward(const float* x, float* y, std::int64_t outer, std::int64_t classes, std::int64_t inner,
                     bool log_space, Stream s) {
  const std::int64_t positions = outer * inner;
  if (positions == 0 || classes == 0) return;
  softmax_forward_kernel<<<grid_for(positions), kBlock, 0, native(s)>>>(x, y, outer, classes, inner, log_space);
  VG_CUDA_CHECK_LAUNCH();
}

void softmax_backward(const float* y, const float* dy, float* dx, std::int64_t outer, std::int64_t classes,
                      std::int64_t inner, bool log_space, Stream s) {
  const std::int64_t positions = outer * inner;
  if (positions == 0 || classes == 0) return;
  softmax_backward_kernel<<<grid_for(positions), kBlock, 0, native(s)>>>(y, dy, dx, outer, classes, inner,
                                                                         log_space);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
