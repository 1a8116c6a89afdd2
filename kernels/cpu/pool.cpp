// CPU twins of 3D max and average pooling: one loop over output elements (forward) or input
// elements (backward, a gather over covering windows), each running the VG_HD functions of kernels/pool.h.
#include "kernels/pool.h"

namespace voxgrad::kernels::cpu {

namespace {
constexpr std::int64_t kParallelMin = 1 << 14;
}  // namespace

template <class T>
void max_pool3d_forward(const T* x, T* y, std::int32_t* arg, const PoolGeometry& g) {
  const std::int64_t per = g.out_plane(), n = g.planes * per;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t ow = r % g.out[2], oh = (r / g.out[2]) % g.out[1], od = r / (g.out[2] * g.out[1]);
    y[i] = max_pool_at(x + p * g.in_plane(), g, od, oh, ow, arg + i);
  }
}

template <class T>
void max_pool3d_backward(const T* dy, const std::int32_t* arg, T* dx, const PoolGeometry& g) {
  const std::int64_t per = g.in_plane(), n = g.planes * per;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t w = r % g.in[2], h = (r / g.in[2]) % g.in[1], d = r / (g.in[2] * g.in[1]);
    dx[i] = max_pool_grad_at(dy + p * g.out_plane(), arg + p * g.out_plane(), g, d, h, w);
  }
}

template <class T>
void avg_pool3d_forward(const T* x, T* y, const PoolGeometry& g, bool count_include_pad) {
  const std::int64_t per = g.out_plane(), n = g.planes * per;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t ow = r % g.out[2], oh = (r / g.out[2]) % g.out[1], od = r / (g.out[2] * g.out[1]);
    y[i] = avg_pool_at(x + p * g.in_plane(), g, od, oh, ow, count_include_pad);
  }
}

template <class T>
void avg_pool3d_backward(const T* dy, T* dx, const PoolGeometry& g, bool count_include_pad) {
  const std::int64_t per = g.in_plane(), n = g.planes * per;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t p = i / per, r = i - p * per;
    const std::int64_t w = r % g.in[2], h = (r / g.in[2]) % g.in[1], d = r / (g.in[2] * g.in[1]);
    dx[i] = avg_pool_grad_at(dy + p * g.out_plane(), g, d, h, w, count_include_pad);
  }
}

template void max_pool3d_forward<float>(const float*, float*, std::int32_t*, const PoolGeometry&);
template void max_pool3d_forward<double>(const double*, double*, std::int32_t*, const PoolGeometry&);
template void max_pool3d_backward<float>(const float*, const std::int32_t*, float*, const PoolGeometry&);
template void max_pool3d_backward<double>(const double*, const std::int32_t*, double*, const PoolGeometry&);
template void avg_pool3d_forward<float>(const float*, float*, const PoolGeometry&, bool);
template void avg_pool3d_forward<double>(const double*, double*, const PoolGeometry&, bool);
template void avg_pool3d_backward<float>(const float*, float*, const PoolGeometry&, bool);
template void avg_pool3d_backward<double>(const double*, double*, const PoolGeometry&, bool);

}  // namespace voxgrad::kernels::cpu
