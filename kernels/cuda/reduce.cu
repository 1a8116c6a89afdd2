// CUDA sum_axes and expand_axes over the ReduceGeometry index arithmetic in kernels/reduce.h.
// Short reduced blocks get one thread per output; long ones one block per output with a warp-
// shuffle tree, in a fixed order, so results are deterministic run to run.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/reduce.h"

namespace voxgrad::kernels::cuda {

namespace {

constexpr int kWarps = kBlock / 32;
// Below this block length one thread per output is cheaper than a block's tree reduction.
constexpr std::int64_t kShortBlock = 128;
// With the kept axis innermost, one thread per output reads coalesced; worth it once there are
// enough outputs to fill the GPU.
constexpr std::int64_t kManyOutputs = 1 << 14;

__global__ void sum_per_thread_kernel(const float* __restrict__ x, float* __restrict__ y, ReduceGeometry g,
                                      float scale) {
  for (std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < g.kept_count;
       o += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float* base = x + reduce_kept_offset(g, o);
    float acc = 0.0f;
    for (std::int64_t r = 0; r < g.red_count; ++r) acc += base[reduce_red_offset(g, r)];
    y[o] = acc * scale;
  }
}

// One block per output. When the innermost reduced run is at least a block long, threads sweep
// each run side by side (coalesced when its stride is 1) and only a run's start is decomposed;
// otherwise threads take reduced indices round-robin.
__global__ void __launch_bounds__(kBlock) sum_per_block_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                               ReduceGeometry g, float scale) {
  __shared__ float warp_sums[kWarps];
  const std::int64_t run = g.red_size[g.red_ndim - 1];
  const std::int64_t run_stride = g.red_stride[g.red_ndim - 1];
  for (std::int64_t o = blockIdx.x; o < g.kept_count; o += gridDim.x) {
    const float* base = x + reduce_kept_offset(g, o);
    float acc = 0.0f;
    if (run >= kBlock) {
      for (std::int64_t start = 0; start < g.red_count; start += run) {
        const float* row = base + reduce_red_offset(g, start);
        for (std::int64_t j = threadIdx.x; j < run; j += kBlock) acc += row[j * run_stride];
      }
    } else {
      for (std::int64_t r = threadIdx.x; r < g.red_count; r += kBlock) acc += base[reduce_red_offset(g, r)];
    }
    for (int d = 16; d > 0; d >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, d);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
      acc = threadIdx.x < kWarps ? warp_sums[threadIdx.x] : 0.0f;
      for (int d = kWarps / 2; d > 0; d >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, d);
      if (threadIdx.x == 0) y[o] = acc * scale;
    }
    __syncthreads();  // warp_sums is rewritten for the next output
  }
}

__global__ void expand_kernel(const float* __restrict__ dy, float* __restrict__ dx, ReduceGeometry g, float scale,
                              std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dx[i] = scale * dy[reduce_output_index(g, i)];
}

}  // namespace

void sum_axes(const float* x, float* y, const ReduceGeometry& g, float scale, Stream s) {
  if (g.kept_count == 0) return;
  const bool kept_innermost = g.kept_ndim > 0 && g.kept_stride[g.kept_ndim - 1] == 1;
  if (g.red_count < kShortBlock || (kept_innermost && g.kept_count >= kManyOutputs)) {
    sum_per_thread_kernel<<<grid_for(g.kept_count), kBlock, 0, native(s)>>>(x, y, g, scale);
  } else {
    const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>(g.kept_count, 65535));
    sum_per_block_kernel<<<blocks, kBlock, 0, native(s)>>>(x, y, g, scale);
  }
  VG_CUDA_CHECK_LAUNCH();
}

void expand_axes(const float* dy, float* dx, const ReduceGeometry& g, float scale, Stream s) {
  const std::int64_t n = g.kept_count * g.red_count;
  if (n == 0) return;
  expand_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(dy, dx, g, scale, n);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
