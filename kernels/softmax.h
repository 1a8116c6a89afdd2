// Softmax and log-softmax over one axis of a contiguous tensor viewed as (outer, classes, inner),
// forward and backward. One position (outer, inner) is one independent distribution.
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace voxgrad::kernels {

// Host compilers see only ::exp(double) etc. unqualified, which would run float math in double
// on the CPU; these make float calls pick the float overloads, as CUDA's own overloads do on
// both passes of nvcc (where std:: names are host-only and must not be used).
#if !defined(__CUDACC__)
using std::exp;
using std::log;
#endif

// One distribution: `classes` values `stride` apart. Max-subtracted for stability.
template <class T>
VG_HD void softmax_position_forward(const T* x, T* y, std::int64_t classes, std::int64_t stride, bool log_space) {
  T m = x[0];
  for (std::int64_t c = 1; c < classes; ++c) m = x[c * stride] > m ? x[c * stride] : m;
  T z = T(0);
  for (std::int64_t c = 0; c < classes; ++c) z += exp(x[c * stride] - m);
  if (log_space) {
    const T log_z = log(z);
    for (std::int64_t c = 0; c < classes; ++c) y[c * stride] = x[c * stride] - m - log_z;
  } else {
    const T inv_z = T(1) / z;
    for (std::int64_t c = 0; c < classes; ++c) y[c * stride] = exp(x[c * stride] - m) * inv_z;
  }
}

// softmax:     dx = y * (dy - sum_c dy*y)
// log_softmax: dx = dy - exp(y) * sum_c dy
template <class T>
VG_HD void softmax_position_backward(const T* y, const T* dy, T* dx, std::int64_t classes, std::int64_t stride,
                                     bool log_space) {
  T s = T(0);
  if (log_space) {
    for (std::int64_t c = 0; c < classes; ++c) s += dy[c * stride];
    for (std::int64_t c = 0; c < classes; ++c) dx[c * stride] = dy[c * stride] - exp(y[c * stride]) * s;
  } else {
    for (std::int64_t c = 0; c < classes; ++c) s += dy[c * stride] * y[c * stride];
    for (std::int64_t c = 0; c < classes; ++c) dx[c * stride] = y[c * stride] * (dy[c * stride] - s);
  }
}

namespace cpu {
template <class T>
void softmax_forward(const T* x, T* y, std::int64_t outer, std::int64_t classes, std::int64_t inner, bool log_space);
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, std::int64_t outer, std::int64_t classes, std::int64_t inner,
                      bool log_space);
}  // namespace cpu

namespace cuda {
void softmax_forward(const float* x, float* y, std::int64_t outer, std::int64_t classes, std::int64_t inner,
                     bool log_space, Stream s);
void softmax_backward(const float* y, const float* dy, float* dx, std::int64_t outer, std::int64_t classes,
                      std::int64_t inner, bool log_space, Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
