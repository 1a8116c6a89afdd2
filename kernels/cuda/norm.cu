// CUDA norm family: statistics and backward sums per (channel, split) block (two passes, double
// partials, a fixed-order shuffle tree) merged per channel in a fixed order, so they are stable and
// deterministic; one thread per element for the affine forward and the input gradient (kernels/norm.h).
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/norm.h"

namespace voxgrad::kernels::cuda {

namespace {

constexpr int kWarps = kBlock / 32;
// About four blocks per SM on the largest GPUs; a split keeps every thread busy for many elements.
constexpr std::int64_t kTargetBlocks = 1024;
constexpr std::int64_t kMinPerSplit = 16 * kBlock;
constexpr std::int64_t kMaxSplitBlocks = 65535;

// Sum of `v` over the block, returned to every thread. `shared` holds kWarps doubles.
__device__ double block_sum(double v, double* shared) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kWarps ? shared[threadIdx.x] : 0.0;
    for (int d = kWarps / 2; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    if (threadIdx.x == 0) shared[0] = v;
  }
  __syncthreads();
  const double total = shared[0];
  __syncthreads();  // shared is rewritten by the next call
  return total;
}

// Where a channel's reductions are cut: `splits` blocks of `per_split` consecutive elements (in
// (outer, inner) order), enough blocks in all to fill the GPU even for a few large channels.
struct ChannelSplit {
  std::int64_t splits = 1;
  std::int64_t per_split = 1;
};

// A block's elements of channel c: [r0, r1) of the channel's (outer, inner) order. Each thread
// walks its own elements with an incremental (o, j), avoiding a 64-bit division per element.
template <class F>
__device__ void for_channel_range(const NormGeometry& g, std::int64_t c, std::int64_t r0, std::int64_t r1, F f) {
  std::int64_t r = r0 + threadIdx.x;
  if (r >= r1) return;
  std::int64_t o = r / g.inner, j = r - o * g.inner;
  for (; r < r1; r += kBlock) {
    f((o * g.channels + c) * g.inner + j);
    j += kBlock;
    while (j >= g.inner) {
      j -= g.inner;
      ++o;
    }
  }
}

// Per (channel, split): count, mean and sum of squared deviations (two passes over the block's
// range, which the second pass mostly reads from L2). partial is (channels, splits, 3).
__global__ void __launch_bounds__(kBlock) norm_partial_stats_kernel(const float* __restrict__ x,
                                                                    double* __restrict__ partial, NormGeometry g,
                                                                    ChannelSplit split) {
  __shared__ double shared[kWarps];
  const std::int64_t count = g.count();
  for (std::int64_t b = blockIdx.x; b < g.channels * split.splits; b += gridDim.x) {
    const std::int64_t c = b / split.splits, k = b - c * split.splits;
    const std::int64_t r0 = k * split.per_split;
    const std::int64_t r1 = r0 + split.per_split < count ? r0 + split.per_split : count;
    double sum = 0;
    for_channel_range(g, c, r0, r1, [&](std::int64_t i) { sum += static_cast<double>(x[i]); });
    const double n = static_cast<double>(r1 - r0);
    const double m = block_sum(sum, shared) / n;
    double ss = 0;
    for_channel_range(g, c, r0, r1, [&](std::int64_t i) {
      const double d = static_cast<double>(x[i]) - m;
      ss += d * d;
    });
    ss = block_sum(ss, shared);
    if (threadIdx.x == 0) {
      partial[3 * b] = n;
      partial[3 * b + 1] = m;
      partial[3 * b + 2] = ss;
    }
  }
}

// One thread per channel merges its splits in order (Chan et al.'s pairwise update), so the
// result does not depend on scheduling. With no splits (channels without elements) it writes
// norm_channel_stats' values for an empty channel, as the CPU twin does.
__global__ void norm_merge_stats_kernel(const double* __restrict__ partial, float* __restrict__ mean,
                                        float* __restrict__ var, float* __restrict__ invstd, std::int64_t channels,
                                        std::int64_t splits, double eps) {
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double n = 0, m = 0, m2 = 0;
    for (std::int64_t k = 0; k < splits; ++k) {
      const double* p = partial + 3 * (c * splits + k);
      const double nb = p[0], delta = p[1] - m, total = n + nb;
      m += delta * nb / total;
      m2 += p[2] + delta * delta * n * nb / total;
      n = total;
    }
    const NormChannelStats st = norm_channel_stats(n, m, m2, eps);
    mean[c] = static_cast<float>(st.mean);
    var[c] = static_cast<float>(st.var);
    invstd[c] = static_cast<float>(st.invstd);
  }
}

__global__ void norm_forward_kernel(const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ invstd, const float* __restrict__ weight,
                                    const float* __restrict__ bias, float* __restrict__ y, NormGeometry g) {
  const std::int64_t n = g.numel();
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = norm_channel_of(g, i);
    y[i] = norm_forward_at(x[i], mean[c], invstd[c], weight, bias, c % g.affine_channels);
  }
}

// Per (channel, split): sum(dy) and sum(dy * xhat). partial is (channels, splits, 2).
__global__ void __launch_bounds__(kBlock) norm_partial_backward_kernel(const float* __restrict__ x,
                                                                       const float* __restrict__ dy,
                                                                       const float* __restrict__ mean,
                                                                       const float* __restrict__ invstd,
                                                                       double* __restrict__ partial, NormGeometry g,
                                                                       ChannelSplit split) {
  __shared__ double shared[kWarps];
  const std::int64_t count = g.count();
  for (std::int64_t b = blockIdx.x; b < g.channels * split.splits; b += gridDim.x) {
    const std::int64_t c = b / split.splits, k = b - c * split.splits;
    const std::int64_t r0 = k * split.per_split;
    const std::int64_t r1 = r0 + split.per_split < count ? r0 + split.per_split : count;
    const double m = mean[c], is = invstd[c];
    double s = 0, sx = 0;
    for_channel_range(g, c, r0, r1, [&](std::int64_t i) {
      const double d = dy[i];
      s += d;
      sx += d * (static_cast<double>(x[i]) - m) * is;
    });
    s = block_sum(s, shared);
    sx = block_sum(sx, shared);
    if (threadIdx.x == 0) {
      partial[2 * b] = s;
      partial[2 * b + 1] = sx;
    }
  }
}

// As norm_merge_stats_kernel; no splits gives sums of 0.
__global__ void norm_merge_backward_kernel(const double* __restrict__ partial, float* __restrict__ sum_dy,
                                           float* __restrict__ sum_dy_xhat, std::int64_t channels,
                                           std::int64_t splits) {
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double s = 0, sx = 0;
    for (std::int64_t k = 0; k < splits; ++k) {
      s += partial[2 * (c * splits + k)];
      sx += partial[2 * (c * splits + k) + 1];
    }
    sum_dy[c] = static_cast<float>(s);
    sum_dy_xhat[c] = static_cast<float>(sx);
  }
}

__global__ void norm_backward_input_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                           const float* __restrict__ mean, const float* __restrict__ invstd,
                                           const float* __restrict__ weight, const float* __restrict__ sum_dy,
                                           const float* __restrict__ sum_dy_xhat, float* __restrict__ dx,
                                           NormGeometry g, bool batch_stats) {
  const std::int64_t n = g.numel();
  const float inv_count = 1.0f / static_cast<float>(g.count());
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = norm_channel_of(g, i);
    const float w = weight ? weight[c % g.affine_channels] : 1.0f;
    dx[i] = norm_backward_at(x[i], dy[i], mean[c], invstd[c], w, batch_stats ? sum_dy[c] : 0.0f,
                             batch_stats ? sum_dy_xhat[c] : 0.0f, inv_count, batch_stats);
  }
}

// One thread per affine entry, summing its channels in order (deterministic, no atomics).
__global__ void norm_affine_grad_kernel(const float* __restrict__ sum_dy, const float* __restrict__ sum_dy_xhat,
                                        float* __restrict__ dweight, float* __restrict__ dbias, NormGeometry g) {
  for (std::int64_t a = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; a < g.affine_channels;
       a += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double w = 0, b = 0;
    for (std::int64_t c = a; c < g.channels; c += g.affine_channels) {
      w += sum_dy_xhat[c];
      b += sum_dy[c];
    }
    if (dweight) dweight[a] = static_cast<float>(w);
    if (dbias) dbias[a] = static_cast<float>(b);
  }
}

__global__ void batch_norm_update_running_kernel(const float* __restrict__ mean, const float* __restrict__ var,
                                                 float* __restrict__ running_mean, float* __restrict__ running_var,
                                                 std::int64_t channels, double unbias, double momentum) {
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (running_mean)
      running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean[c]);
    if (running_var)
      running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * var[c] * unbias);
  }
}

__global__ void count_batch_kernel(std::int32_t* count) { *count = next_batch_count(*count); }

__global__ void invstd_from_var_kernel(const float* __restrict__ var, float* __restrict__ invstd,
                                       std::int64_t channels, double eps) {
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    invstd[c] = static_cast<float>(norm_invstd(static_cast<double>(var[c]), eps));
}

__global__ void dropout_mask_kernel(float* __restrict__ mask, std::int64_t n, std::uint64_t seed,
                                    std::uint64_t offset, double p) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    mask[i] = static_cast<float>(dropout_channel_scale(seed, offset, i, p));
}

__global__ void channel_scale_kernel(const float* __restrict__ x, const float* __restrict__ mask,
                                     float* __restrict__ y, std::int64_t n, std::int64_t inner) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] * mask[i / inner];
}

// Splits of at least kMinPerSplit elements, until the blocks of all channels reach kTargetBlocks.
ChannelSplit channel_split(const NormGeometry& g) {
  const std::int64_t count = g.count();
  const std::int64_t want = std::max<std::int64_t>(1, kTargetBlocks / std::max<std::int64_t>(g.channels, 1));
  const std::int64_t most = std::max<std::int64_t>(1, count / kMinPerSplit);
  ChannelSplit split;
  split.per_split = (count + std::min(want, most) - 1) / std::min(want, most);
  split.splits = (count + split.per_split - 1) / split.per_split;  // every split non-empty
  return split;
}

unsigned split_blocks(const NormGeometry& g, const ChannelSplit& split) {
  return static_cast<unsigned>(std::min<std::int64_t>(g.channels * split.splits, kMaxSplitBlocks));
}

}  // namespace

void norm_stats(const float* x, float* mean, float* var, float* invstd, const NormGeometry& g, double eps,
                Scratch& scratch, Stream s) {
  if (g.channels == 0) return;
  if (g.count() == 0) {
    norm_merge_stats_kernel<<<grid_for(g.channels), kBlock, 0, native(s)>>>(nullptr, mean, var, invstd, g.channels, 0,
                                                                            eps);
    VG_CUDA_CHECK_LAUNCH();
    return;
  }
  const ChannelSplit split = channel_split(g);
  auto* partial = static_cast<double*>(scratch.get(sizeof(double) * 3 * g.channels * split.splits));
  norm_partial_stats_kernel<<<split_blocks(g, split), kBlock, 0, native(s)>>>(x, partial, g, split);
  VG_CUDA_CHECK_LAUNCH();
  norm_merge_stats_kernel<<<grid_for(g.channels), kBlock, 0, native(s)>>>(partial, mean, var, invstd, g.channels,
                                                                          split.splits, eps);
  VG_CUDA_CHECK_LAUNCH();
}

void norm_forward(const float* x, const float* mean, const float* invstd, const float* weight, const float* bias,
                  float* y, const NormGeometry& g, Stream s) {
  if (g.numel() == 0) return;
  norm_forward_kernel<<<grid_for(g.numel()), kBlock, 0, native(s)>>>(x, mean, invstd, weight, bias, y, g);
  VG_CUDA_CHECK_LAUNCH();
}

void norm_backward_reduce(const float* x, const float* dy, const float* mean, const float* invstd, float* sum_dy,
                          float* sum_dy_xhat, const NormGeometry& g, Scratch& scratch, Stream s) {
  if (g.channels == 0) return;
  if (g.count() == 0) {
    norm_merge_backward_kernel<<<grid_for(g.channels), kBlock, 0, native(s)>>>(nullptr, sum_dy, sum_dy_xhat, g.channels,
                                                                               0);
    VG_CUDA_CHECK_LAUNCH();
    return;
  }
  const ChannelSplit split = channel_split(g);
  auto* partial = static_cast<double*>(scratch.get(sizeof(double) * 2 * g.channels * split.splits));
  norm_partial_backward_kernel<<<split_blocks(g, split), kBlock, 0, native(s)>>>(x, dy, mean, invstd, partial, g,
                                                                                  split);
  VG_CUDA_CHECK_LAUNCH();
  norm_merge_backward_kernel<<<grid_for(g.channels), kBlock, 0, native(s)>>>(partial, sum_dy, sum_dy_xhat,
                                                                             g.channels, split.splits);
  VG_CUDA_CHECK_LAUNCH();
}

void norm_backward_input(const float* x, const float* dy, const float* mean, const float* invstd,
                         const float* weight, const float* sum_dy, const float* sum_dy_xhat, float* dx,
                         const NormGeometry& g, bool batch_stats, Stream s) {
  if (g.numel() == 0) return;
  norm_backward_input_kernel<<<grid_for(g.numel()), kBlock, 0, native(s)>>>(x, dy, mean, invstd, weight, sum_dy,
                                                                             sum_dy_xhat, dx, g, batch_stats);
  VG_CUDA_CHECK_LAUNCH();
}

void norm_affine_grad(const float* sum_dy, const float* sum_dy_xhat, float* dweight, float* dbias,
                      const NormGeometry& g, Stream s) {
  if (g.affine_channels == 0) return;
  norm_affine_grad_kernel<<<grid_for(g.affine_channels), kBlock, 0, native(s)>>>(sum_dy, sum_dy_xhat, dweight,
                                                                                  dbias, g);
  VG_CUDA_CHECK_LAUNCH();
}

void batch_norm_update_running(const float* mean, const float* var, float* running_mean, float* running_var,
                               std::int64_t channels, std::int64_t count, double momentum, Stream s) {
  if (channels == 0) return;
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  batch_norm_update_running_kernel<<<grid_for(channels), kBlock, 0, native(s)>>>(mean, var, running_mean,
                                                                                 running_var, channels, unbias,
                                                                                 momentum);
  VG_CUDA_CHECK_LAUNCH();
}

void count_batch(std::int32_t* count, Stream s) {
  count_batch_kernel<<<1, 1, 0, native(s)>>>(count);
  VG_CUDA_CHECK_LAUNCH();
}

void invstd_from_var(const float* var, float* invstd, std::int64_t channels, double eps, Stream s) {
  if (channels == 0) return;
  invstd_from_var_kernel<<<grid_for(channels), kBlock, 0, native(s)>>>(var, invstd, channels, eps);
  VG_CUDA_CHECK_LAUNCH();
}

void dropout_mask(float* mask, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double p, Stream s) {
  if (n == 0) return;
  dropout_mask_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(mask, n, seed, offset, p);
  VG_CUDA_CHECK_LAUNCH();
}

void channel_scale(const float* x, const float* mask, float* y, std::int64_t channels, std::int64_t inner, Stream s) {
  const std::int64_t n = channels * inner;
  if (n == 0) return;
  channel_scale_kernel<<<grid_for(n), kBlock, 0, native(s)>>>(x, mask, y, n, inner);
  VG_CUDA_CHECK_LAUNCH();
}

}  // namespace voxgrad::kernels::cuda
