// Per-channel normalisation and scaling: instance and batch norm (statistics, affine forward, the
// closed-form backward, running statistics) and channel-wise dropout, forward and backward.
// Both norms see x as (outer, channels, inner) and reduce over (outer, inner) per channel.
#pragma once

#include <cmath>

#include "kernels/common.h"
#include "kernels/random.h"

namespace voxgrad::kernels {

#if !defined(__CUDACC__)
using std::sqrt;
#endif

// x viewed as (outer, channels, inner). Instance norm: (1, N*C, D*H*W); batch norm: (N, C, D*H*W).
// The affine parameters have `affine_channels` entries, read at channel % affine_channels
// (C for both norms: instance norm's channel n*C + c takes weight c).
struct NormGeometry {
  std::int64_t outer = 1;
  std::int64_t channels = 1;
  std::int64_t inner = 1;
  std::int64_t affine_channels = 1;
  VG_HD std::int64_t count() const { return outer * inner; }  // elements per channel
  VG_HD std::int64_t numel() const { return outer * channels * inner; }
};

VG_HD std::int64_t norm_channel_of(const NormGeometry& g, std::int64_t i) { return (i / g.inner) % g.channels; }

// 1/sqrt(var + eps), in double on both devices.
VG_HD double norm_invstd(double var, double eps) { return 1.0 / sqrt(var + eps); }

// One channel's statistics from its element count, mean and sum of squared deviations. A channel
// without elements gets mean 0, variance 0 and invstd 1/sqrt(eps) on both devices.
struct NormChannelStats {
  double mean, var, invstd;
};
VG_HD NormChannelStats norm_channel_stats(double count, double mean, double squared_deviations, double eps) {
  if (!(count > 0)) return {0.0, 0.0, norm_invstd(0.0, eps)};
  const double var = squared_deviations / count;
  return {mean, var, norm_invstd(var, eps)};
}

// y = (x - mean) * invstd * w + b, with w = 1 and b = 0 when the norm has no affine parameters.
template <class T>
VG_HD T norm_forward_at(T x, T mean, T invstd, const T* weight, const T* bias, std::int64_t a) {
  const T xhat = (x - mean) * invstd;
  return (weight ? xhat * weight[a] : xhat) + (bias ? bias[a] : T(0));
}

// dx of one element. With batch statistics (mean and invstd depend on x), the closed form
//   dx = w * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
// over the M elements of the channel; with fixed statistics (batch norm in eval) dx = w * invstd * dy.
template <class T>
VG_HD T norm_backward_at(T x, T dy, T mean, T invstd, T w, T sum_dy, T sum_dy_xhat, T inv_count, bool batch_stats) {
  if (!batch_stats) return w * invstd * dy;
  const T xhat = (x - mean) * invstd;
  return w * invstd * (dy - sum_dy * inv_count - xhat * sum_dy_xhat * inv_count);
}

// Channel i of a channel-wise dropout: 1/(1-p) when kept (probability 1-p), 0 when dropped.
// The uniform is Philox's element i at (seed, offset), so both devices draw the same mask.
VG_HD double dropout_channel_scale(std::uint64_t seed, std::uint64_t offset, std::int64_t i, double p) {
  const double keep = 1.0 - p;
  return philox_uniform(seed, offset, i) <= keep ? 1.0 / keep : 0.0;
}

// BatchNorm's num_batches_tracked after one more training batch. It stops at the int32 maximum
// rather than wrapping (PyTorch counts in int64; no training comes near 2^31 batches).
VG_HD std::int32_t next_batch_count(std::int32_t count) { return count < 2147483647 ? count + 1 : count; }

namespace cpu {
// mean, var (biased) and invstd = 1/sqrt(var + eps), each (channels); accumulated in double.
// Channels without elements get norm_channel_stats' values.
template <class T>
void norm_stats(const T* x, T* mean, T* var, T* invstd, const NormGeometry& g, double eps);
// y (outer, channels, inner); weight and bias (affine_channels) or null.
template <class T>
void norm_forward(const T* x, const T* mean, const T* invstd, const T* weight, const T* bias, T* y,
                  const NormGeometry& g);
// sum_dy and sum_dy_xhat (channels): the per-channel sums the backward needs (0 without elements).
template <class T>
void norm_backward_reduce(const T* x, const T* dy, const T* mean, const T* invstd, T* sum_dy, T* sum_dy_xhat,
                          const NormGeometry& g);
// dx (outer, channels, inner); weight may be null (w = 1); the sums are read only with batch_stats.
template <class T>
void norm_backward_input(const T* x, const T* dy, const T* mean, const T* invstd, const T* weight, const T* sum_dy,
                         const T* sum_dy_xhat, T* dx, const NormGeometry& g, bool batch_stats);
// dweight = sum of sum_dy_xhat and dbias = sum of sum_dy over the channels sharing each affine
// entry (affine_channels); either output may be null.
template <class T>
void norm_affine_grad(const T* sum_dy, const T* sum_dy_xhat, T* dweight, T* dbias, const NormGeometry& g);
// PyTorch's running-statistics update: r = (1 - m) * r + m * batch, with the unbiased variance
// var * count / (count - 1) for running_var. Either running tensor may be null.
template <class T>
void batch_norm_update_running(const T* mean, const T* var, T* running_mean, T* running_var, std::int64_t channels,
                               std::int64_t count, double momentum);
// invstd = 1/sqrt(var + eps) (channels): eval-mode batch norm from the running variance.
template <class T>
void invstd_from_var(const T* var, T* invstd, std::int64_t channels, double eps);
// mask (n): dropout_channel_scale of each channel.
template <class T>
void dropout_mask(T* mask, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double p);
// y (channels, inner) = x * mask[channel]: dropout's forward and, with dy for x, its backward.
template <class T>
void channel_scale(const T* x, const T* mask, T* y, std::int64_t channels, std::int64_t inner);
// *count = next_batch_count(*count), where the counter lives: on a GPU in the stream's order, so a
// training step never waits to read it.
void count_batch(std::int32_t* count);
}  // namespace cpu

namespace cuda {
// The statistics and the backward sums take scratch for their per-(channel, split) partials.
void norm_stats(const float* x, float* mean, float* var, float* invstd, const NormGeometry& g, double eps,
                Scratch& scratch, Stream s);
void norm_forward(const float* x, const float* mean, const float* invstd, const float* weight, const float* bias,
                  float* y, const NormGeometry& g, Stream s);
void norm_backward_reduce(const float* x, const float* dy, const float* mean, const float* invstd, float* sum_dy,
                          float* sum_dy_xhat, const NormGeometry& g, Scratch& scratch, Stream s);
void norm_backward_input(const float* x, const float* dy, const float* mean, const float* invstd,
                         const float* weight, const float* sum_dy, const float* sum_dy_xhat, float* dx,
                         const NormGeometry& g, bool batch_stats, Stream s);
void norm_affine_grad(const float* sum_dy, const float* sum_dy_xhat, float* dweight, float* dbias,
                      const NormGeometry& g, Stream s);
void batch_norm_update_running(const float* mean, const float* var, float* running_mean, float* running_var,
                               std::int64_t channels, std::int64_t count, double momentum, Stream s);
void invstd_from_var(const float* var, float* invstd, std::int64_t channels, double eps, Stream s);
void dropout_mask(float* mask, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double p, Stream s);
void channel_scale(const float* x, const float* mask, float* y, std::int64_t channels, std::int64_t inner, Stream s);
void count_batch(std::int32_t* count, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
