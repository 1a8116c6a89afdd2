// 3D max and average pooling over (N, C, D, H, W), forward and backward. The window arithmetic is
// written once (VG_HD) and both backwards gather over the windows covering each input element, so
// they need no atomics and give the same sums in the same order on both devices.
#pragma once

#include "kernels/common.h"

namespace voxgrad::kernels {

// Every (n, c) plane is pooled alike: in (D, H, W) -> out (OD, OH, OW), axes in that order.
struct PoolGeometry {
  std::int64_t planes = 1;  // N * C
  std::int64_t in[3] = {1, 1, 1};
  std::int64_t out[3] = {1, 1, 1};
  std::int64_t kernel[3] = {1, 1, 1};
  std::int64_t stride[3] = {1, 1, 1};
  std::int64_t padding[3] = {0, 0, 0};
  VG_HD std::int64_t in_plane() const { return in[0] * in[1] * in[2]; }
  VG_HD std::int64_t out_plane() const { return out[0] * out[1] * out[2]; }
};

// Window of output `o` along `axis`: [start, end) clipped to the input, and the padded length
// PyTorch divides by with count_include_pad (clipped to input + padding only).
struct PoolSpan {
  std::int64_t start, end, padded;
};

VG_HD PoolSpan pool_span(const PoolGeometry& g, int axis, std::int64_t o) {
  const std::int64_t s = o * g.stride[axis] - g.padding[axis];
  std::int64_t e = s + g.kernel[axis];
  const std::int64_t padded_end = e < g.in[axis] + g.padding[axis] ? e : g.in[axis] + g.padding[axis];
  e = e < g.in[axis] ? e : g.in[axis];
  return {s > 0 ? s : 0, e, padded_end - s};
}

// Outputs along `axis` whose windows contain input index i: [lo, hi] (empty when lo > hi).
VG_HD void pool_covering(const PoolGeometry& g, int axis, std::int64_t i, std::int64_t* lo, std::int64_t* hi) {
  const std::int64_t first = i + g.padding[axis] - g.kernel[axis] + 1;  // o * stride >= first
  *lo = first <= 0 ? 0 : (first + g.stride[axis] - 1) / g.stride[axis];
  const std::int64_t last = (i + g.padding[axis]) / g.stride[axis];
  *hi = last < g.out[axis] - 1 ? last : g.out[axis] - 1;
}

// Max over one window of a plane, scanned d, h, w in order; the first maximum wins ties and a NaN
// wins (as PyTorch). *arg receives its index within the plane.
template <class T>
VG_HD T max_pool_at(const T* plane, const PoolGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow,
                    std::int32_t* arg) {
  const PoolSpan sd = pool_span(g, 0, od), sh = pool_span(g, 1, oh), sw = pool_span(g, 2, ow);
  std::int64_t best_i = (sd.start * g.in[1] + sh.start) * g.in[2] + sw.start;
  T best = plane[best_i];
  for (std::int64_t d = sd.start; d < sd.end; ++d)
    for (std::int64_t h = sh.start; h < sh.end; ++h)
      for (std::int64_t w = sw.start; w < sw.end; ++w) {
        const std::int64_t i = (d * g.in[1] + h) * g.in[2] + w;
        const T v = plane[i];
        if (v > best || v != v) {
          best = v;
          best_i = i;
        }
      }
  *arg = static_cast<std::int32_t>(best_i);
  return best;
}

// The divisor of one output: the padded window size, or only the elements inside the input.
VG_HD std::int64_t avg_pool_divisor(const PoolGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow,
                                    bool count_include_pad) {
  const PoolSpan sd = pool_span(g, 0, od), sh = pool_span(g, 1, oh), sw = pool_span(g, 2, ow);
  if (count_include_pad) return sd.padded * sh.padded * sw.padded;
  return (sd.end - sd.start) * (sh.end - sh.start) * (sw.end - sw.start);
}

template <class T>
VG_HD T avg_pool_at(const T* plane, const PoolGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow,
                    bool count_include_pad) {
  const PoolSpan sd = pool_span(g, 0, od), sh = pool_span(g, 1, oh), sw = pool_span(g, 2, ow);
  T sum = T(0);
  for (std::int64_t d = sd.start; d < sd.end; ++d)
    for (std::int64_t h = sh.start; h < sh.end; ++h)
      for (std::int64_t w = sw.start; w < sw.end; ++w) sum += plane[(d * g.in[1] + h) * g.in[2] + w];
  return sum / static_cast<T>(avg_pool_divisor(g, od, oh, ow, count_include_pad));
}

// dx at input (d, h, w) of one plane: dy of every covering output whose argmax is this element.
template <class T>
VG_HD T max_pool_grad_at(const T* dy_plane, const std::int32_t* arg_plane, const PoolGeometry& g, std::int64_t d,
                         std::int64_t h, std::int64_t w) {
  std::int64_t d0, d1, h0, h1, w0, w1;
  pool_covering(g, 0, d, &d0, &d1);
  pool_covering(g, 1, h, &h0, &h1);
  pool_covering(g, 2, w, &w0, &w1);
  const auto self = static_cast<std::int32_t>((d * g.in[1] + h) * g.in[2] + w);
  T acc = T(0);
  for (std::int64_t od = d0; od <= d1; ++od)
    for (std::int64_t oh = h0; oh <= h1; ++oh)
      for (std::int64_t ow = w0; ow <= w1; ++ow) {
        const std::int64_t o = (od * g.out[1] + oh) * g.out[2] + ow;
        if (arg_plane[o] == self) acc += dy_plane[o];
      }
  return acc;
}

// dx at input (d, h, w) of one plane: dy / divisor of every covering output.
template <class T>
VG_HD T avg_pool_grad_at(const T* dy_plane, const PoolGeometry& g, std::int64_t d, std::int64_t h, std::int64_t w,
                         bool count_include_pad) {
  std::int64_t d0, d1, h0, h1, w0, w1;
  pool_covering(g, 0, d, &d0, &d1);
  pool_covering(g, 1, h, &h0, &h1);
  pool_covering(g, 2, w, &w0, &w1);
  T acc = T(0);
  for (std::int64_t od = d0; od <= d1; ++od)
    for (std::int64_t oh = h0; oh <= h1; ++oh)
      for (std::int64_t ow = w0; ow <= w1; ++ow)
        acc += dy_plane[(od * g.out[1] + oh) * g.out[2] + ow] /
               static_cast<T>(avg_pool_divisor(g, od, oh, ow, count_include_pad));
  return acc;
}

namespace cpu {
// y (planes, OD, OH, OW); arg (planes, OD, OH, OW) int32 index of the maximum within its plane.
template <class T> void max_pool3d_forward(const T* x, T* y, std::int32_t* arg, const PoolGeometry& g);
// dx (planes, D, H, W) from dy and arg.
template <class T> void max_pool3d_backward(const T* dy, const std::int32_t* arg, T* dx, const PoolGeometry& g);
template <class T> void avg_pool3d_forward(const T* x, T* y, const PoolGeometry& g, bool count_include_pad);
template <class T> void avg_pool3d_backward(const T* dy, T* dx, const PoolGeometry& g, bool count_include_pad);
}  // namespace cpu

namespace cuda {
void max_pool3d_forward(const float* x, float* y, std::int32_t* arg, const PoolGeometry& g, Stream s);
void max_pool3d_backward(const float* dy, const std::int32_t* arg, float* dx, const PoolGeometry& g, Stream s);
void avg_pool3d_forward(const float* x, float* y, const PoolGeometry& g, bool count_include_pad, Stream s);
void avg_pool3d_backward(const float* dy, float* dx, const PoolGeometry& g, bool count_include_pad, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
