// CUDA sum_axes and expand_axes over the ReduceGeometry index arithmetic in kernels/reduce.h.
// Short reduced blocks get one thread per output; long ones are cut into (output, split) blocks
// whose double partials (a fixed-order shuffle tree) are merged per output in split order, so a
// full sum fills the GPU, adds in double as the CPU twin does, and is deterministic run to run.
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
// About four blocks per SM on the largest GPUs; a split keeps every thread busy for many elements.
constexpr std::int64_t kTargetBlocks = 1024;
constexpr std::int64_t kMinPerSplit = 16 * kBlock;
constexpr std::int64_t kMaxSplitBlocks = 65535;

// Where each output's reduced block is cut: `splits` ranges of `per_split` reduced indices.
struct ReduceSplit {
  std::int64_t splits = 1;
  std::int64_t per_split = 1;
};

__global__ void sum_per_thread_kernel(const float* __restrict__ x, float* __restrict__ y, ReduceGeometry g,
                                      float scale) {
  for (std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < g.kept_count;
       o += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float* base = x + reduce_kept_offset(g, o);
    double acc = 0.0;
    for (std::int64_t r = 0; r < g.red_count; ++r) acc += static_cast<double>(base[reduce_red_offset(g, r)]);
    y[o] = static_cast<float>(acc * static_cast<double>(scale));
  }
}

// Sum of `v` over the block, returned to thread 0. `shared` holds kWarps doubles.
__device__ double block_sum(double v, double* shared) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kWarps ? shared[threadIdx.x] : 0.0;
    for (int d = kWarps / 2; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  }
  __syncthreads();  // shared is rewritten by the next call
  return v;
}

// One block per (output, split): the sum of reduced indices [r0, r1) of the output's block. When
// the innermost reduced run is at least a block long, threads sweep each run side by side
// (coalesced when its stride is 1) and only a run's start is decomposed; otherwise threads take
// reduced indices round-robin. With one split the block writes y; otherwise partial
// (kept_count, splits).
__global__ void __launch_bounds__(kBlock)
    sum_split_kernel(const float* __restrict__ x, float* __restrict__ y, double* __restrict__ partial, ReduceGeometry g,
                     ReduceSplit split, float scale) {
  __shared__ double shared[kWarps];
  const std::int64_t run = g.red_size[g.red_ndim - 1];
  const std::int64_t run_stride = g.red_stride[g.red_ndim - 1];
  for (std::int64_t b = blockIdx.x; b < g.kept_count * split.splits; b += gridDim.x) {
    const std::int64_t o = b / split.splits, k = b - o * split.splits;
    const std::int64_t r0 = k * split.per_split;
    const std::int64_t r1 = r0 + split.per_split < g.red_count ? r0 + split.per_split : g.red_count;
    const float* base = x + reduce_kept_offset(g, o);
    double acc = 0.0;
    if (run >= kBlock) {
      for (std::int64_t start = r0; start < r1;) {
        const std::int64_t stop = (start / run + 1) * run < r1 ? (start / run + 1) * run : r1;
        const float* row = base + reduce_red_offset(g, start);
        for (std::int64_t j = threadIdx.x; j < stop - start; j += kBlock)
          acc += static_cast<double>(row[j * run_stride]);
        start = stop;
      }
    } else {
      for (std::int64_t r = r0 + threadIdx.x; r < r1; r += kBlock)
        acc += static_cast<double>(base[reduce_red_offset(g, r)]);
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) {
      if (split.splits == 1) {
        y[o] = static_cast<float>(acc * static_cast<double>(scale));
      } else {
        partial[b] = acc;
      }
    }
  }
}

// One thread per output adds its splits' partials in split order.
__global__ void sum_merge_kernel(const double* __restrict__ partial, float* __restrict__ y, std::int64_t outputs,
                                 std::int64_t splits, float scale) {
  for (std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < outputs;
       o += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double acc = 0.0;
    for (std::int64_t k = 0; k < splits; ++k) acc += partial[o * splits + k];
    y[o] = static_cast<float>(acc * static_cast<double>(scale));
  }
}

__global__ void expand_kernel(const float* __restrict__ dy, float* __restrict__ dx, ReduceGeometry g, float scale,
                              std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dx[i] = scale * dy[reduce_output_index(g, i)];
}

// Splits of at least kMinPerSplit reduced indices, a multiple of the block, until the blocks of all
// outputs reach kTargetBlocks; one split once there are that many outputs.
ReduceSplit reduce_split(const ReduceGeometry& g) {
  const std::int64_t want = std::max<std::int64_t>(1, kTargetBlocks / g.kept_count);
  const std::int64_t most = std::max<std::int64_t>(1, g.red_count / kMinPerSplit);
  const std::int64_t splits = std::min(want, most);
  ReduceSplit split;
  split.per_split = (g.red_count + splits - 1) / splits;
  split.per_split = (split.per_split + kBlock - 1) / kBlock * kBlock;
  split.splits = (g.red_count + split.per_split - 1) / split.per_split;  // every split non-empty
  return split;
}

}  // namespace

void sum_axes(const float* x, float* y, const ReduceGeometry& g, float scale, Scratch& scratch, Stream s) {
  if (g.kept_count == 0) return;
  const bool kept_innermost = g.kept_ndim > 0 && g.kept_stride[g.kept_ndim - 1] == 1;
  if (g.red_count < kShortBlock || (kept_innermost && g.kept_count >= kManyOutputs)) {
    sum_per_thread_kernel<<<grid_for(g.kept_count), kBlock, 0, native(s)>>>(x, y, g, scale);
    VG_CUDA_CHECK_LAUNCH();
    return;
  }
  const ReduceSplit split = reduce_split(g);
  double* partial = nullptr;  // (kept_count, splits)
  if (split.splits > 1) partial = static_cast<double*>(scratch.get(sizeof(double) * g.kept_count * split.splits));
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(g.kept_count * split.splits, kMaxSplitBlocks));
  sum_split_kernel<<<blocks, kBlock, 0, native(s)>>>(x, y, partial, g, split, scale);
  VG_CUDA_CHECK_LAUNCH();
  if (split.splits > 1) {
    sum_merge_kernel<<<grid_for(g.kept_count), kBlock, 0, native(s)>>>(partial, y, g.kept_count, split.splits, scale);
    VG_CUDA_CHECK_LAUNCH();
  }
}

void expand_axes(const float* dy, float* dx, const ReduceGeometry& g, float scale, Stream s) {
  const std::int64_t n = g.kept_count * g.red_count;
  if (n == 0) return;
  expand_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(dy, dx, g, scale, n);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
