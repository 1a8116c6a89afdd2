// CPU twins of the norm family: per-channel statistics and backward sums accumulated in double
// (two passes, so the variance does not suffer E[x²] - E[x]² cancellation), elementwise parts
// through the VG_HD functions of kernels/norm.h, channel-wise dropout masks from Philox.
#include "kernels/norm.h"

#include "kernels/cpu/lane_sums.h"

namespace voxgrad::kernels::cpu {

namespace {
constexpr std::int64_t kParallelMin = 1 << 15;
}  // namespace

template <class T>
void norm_stats(const T* x, T* mean, T* var, T* invstd, const NormGeometry& g, double eps) {
  const std::int64_t count = g.count();
#pragma omp parallel for schedule(static) if (g.numel() > kParallelMin)
  for (std::int64_t c = 0; c < g.channels; ++c) {
    LaneSums sum;
    for (std::int64_t o = 0; o < g.outer; ++o) {
      const T* row = x + (o * g.channels + c) * g.inner;
      add_to_lanes(sum, g.inner, [row](std::int64_t j) { return static_cast<double>(row[j]); });
    }
    const double m = count > 0 ? sum.total() / static_cast<double>(count) : 0.0;
    LaneSums ss;
    for (std::int64_t o = 0; o < g.outer; ++o) {
      const T* row = x + (o * g.channels + c) * g.inner;
      add_to_lanes(ss, g.inner, [row, m](std::int64_t j) {
        const double d = static_cast<double>(row[j]) - m;
        return d * d;
      });
    }
    const NormChannelStats st = norm_channel_stats(static_cast<double>(count), m, ss.total(), eps);
    mean[c] = static_cast<T>(st.mean);
    var[c] = static_cast<T>(st.var);
    invstd[c] = static_cast<T>(st.invstd);
  }
}

template <class T>
void norm_forward(const T* x, const T* mean, const T* invstd, const T* weight, const T* bias, T* y,
                  const NormGeometry& g) {
  // Row by row (one channel each), so the channel's constants are hoisted and the loop vectorises.
  const std::int64_t rows = g.outer * g.channels;
#pragma omp parallel for schedule(static) if (g.numel() > kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t c = r % g.channels, a = c % g.affine_channels;
    const T m = mean[c], is = invstd[c];
    const T* xr = x + r * g.inner;
    T* yr = y + r * g.inner;
    for (std::int64_t j = 0; j < g.inner; ++j) yr[j] = norm_forward_at(xr[j], m, is, weight, bias, a);
  }
}

template <class T>
void norm_backward_reduce(const T* x, const T* dy, const T* mean, const T* invstd, T* sum_dy, T* sum_dy_xhat,
                          const NormGeometry& g) {
#pragma omp parallel for schedule(static) if (g.numel() > kParallelMin)
  for (std::int64_t c = 0; c < g.channels; ++c) {
    const double m = static_cast<double>(mean[c]), is = static_cast<double>(invstd[c]);
    LaneSums s, sx;
    for (std::int64_t o = 0; o < g.outer; ++o) {
      const T* xr = x + (o * g.channels + c) * g.inner;
      const T* dyr = dy + (o * g.channels + c) * g.inner;
      add_to_lanes(s, g.inner, [dyr](std::int64_t j) { return static_cast<double>(dyr[j]); });
      add_to_lanes(sx, g.inner, [xr, dyr, m, is](std::int64_t j) {
        return static_cast<double>(dyr[j]) * (static_cast<double>(xr[j]) - m) * is;
      });
    }
    sum_dy[c] = static_cast<T>(s.total());
    sum_dy_xhat[c] = static_cast<T>(sx.total());
  }
}

template <class T>
void norm_backward_input(const T* x, const T* dy, const T* mean, const T* invstd, const T* weight, const T* sum_dy,
                         const T* sum_dy_xhat, T* dx, const NormGeometry& g, bool batch_stats) {
  const T inv_count = T(1) / static_cast<T>(g.count());
  const std::int64_t rows = g.outer * g.channels;
#pragma omp parallel for schedule(static) if (g.numel() > kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t c = r % g.channels;
    const T w = weight ? weight[c % g.affine_channels] : T(1), m = mean[c], is = invstd[c];
    const T sdy = batch_stats ? sum_dy[c] : T(0), sdyx = batch_stats ? sum_dy_xhat[c] : T(0);
    const std::int64_t base = r * g.inner;
    for (std::int64_t j = base; j < base + g.inner; ++j)
      dx[j] = norm_backward_at(x[j], dy[j], m, is, w, sdy, sdyx, inv_count, batch_stats);
  }
}

template <class T>
void norm_affine_grad(const T* sum_dy, const T* sum_dy_xhat, T* dweight, T* dbias, const NormGeometry& g) {
  for (std::int64_t a = 0; a < g.affine_channels; ++a) {
    double w = 0, b = 0;
    for (std::int64_t c = a; c < g.channels; c += g.affine_channels) {
      w += static_cast<double>(sum_dy_xhat[c]);
      b += static_cast<double>(sum_dy[c]);
    }
    if (dweight) dweight[a] = static_cast<T>(w);
    if (dbias) dbias[a] = static_cast<T>(b);
  }
}

template <class T>
void batch_norm_update_running(const T* mean, const T* var, T* running_mean, T* running_var, std::int64_t channels,
                               std::int64_t count, double momentum) {
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  for (std::int64_t c = 0; c < channels; ++c) {
    if (running_mean)
      running_mean[c] = static_cast<T>((1.0 - momentum) * running_mean[c] + momentum * static_cast<double>(mean[c]));
    if (running_var)
      running_var[c] =
          static_cast<T>((1.0 - momentum) * running_var[c] + momentum * static_cast<double>(var[c]) * unbias);
  }
}

template <class T>
void invstd_from_var(const T* var, T* invstd, std::int64_t channels, double eps) {
  for (std::int64_t c = 0; c < channels; ++c) invstd[c] = static_cast<T>(norm_invstd(static_cast<double>(var[c]), eps));
}

template <class T>
void dropout_mask(T* mask, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double p) {
  for (std::int64_t i = 0; i < n; ++i) mask[i] = static_cast<T>(dropout_channel_scale(seed, offset, i, p));
}

template <class T>
void channel_scale(const T* x, const T* mask, T* y, std::int64_t channels, std::int64_t inner) {
  const std::int64_t n = channels * inner;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] * mask[i / inner];
}

void count_batch(std::int32_t* count) { *count = next_batch_count(*count); }

#define VG_NORM_INSTANTIATE(T)                                                                                   \
  template void norm_stats<T>(const T*, T*, T*, T*, const NormGeometry&, double);                                \
  template void norm_forward<T>(const T*, const T*, const T*, const T*, const T*, T*, const NormGeometry&);      \
  template void norm_backward_reduce<T>(const T*, const T*, const T*, const T*, T*, T*, const NormGeometry&);    \
  template void norm_backward_input<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*, \
                                       const NormGeometry&, bool);                                               \
  template void norm_affine_grad<T>(const T*, const T*, T*, T*, const NormGeometry&);                            \
  template void batch_norm_update_running<T>(const T*, const T*, T*, T*, std::int64_t, std::int64_t, double);    \
  template void invstd_from_var<T>(const T*, T*, std::int64_t, double);                                          \
  template void dropout_mask<T>(T*, std::int64_t, std::uint64_t, std::uint64_t, double);                         \
  template void channel_scale<T>(const T*, const T*, T*, std::int64_t, std::int64_t);

VG_NORM_INSTANTIATE(float)
VG_NORM_INSTANTIATE(double)
#undef VG_NORM_INSTANTIATE

}  // namespace voxgrad::kernels::cpu
