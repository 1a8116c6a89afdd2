// Optimizer update kernels: SGD (momentum, Nesterov, weight decay), Adam and AdamW, in place over a
// parameter, its gradient and its state buffers. The per-element math is written once below (VG_HD)
// with PyTorch's formulas, and called by the CPU loops (float, double) and the CUDA kernels (float).
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace voxgrad::kernels {

#if !defined(__CUDACC__)
using std::sqrt;
#endif

// One SGD step's scalars. `first_step`: the momentum buffer is empty and starts as d_p, as in PyTorch.
template <class T>
struct SgdStep {
  T lr;
  T momentum;      // 0: no buffer is read or written
  T dampening;
  T weight_decay;
  bool nesterov;
  bool first_step;
};

// d_p = g + wd p; buf = momentum buf + (1 - dampening) d_p (buf = d_p at the first step);
// d_p = d_p + momentum buf (Nesterov) or buf; p -= lr d_p.
template <class T>
VG_HD void sgd_update(T& p, T g, T* buf, const SgdStep<T>& s) {
  T d_p = g;
  if (s.weight_decay != T(0)) d_p += s.weight_decay * p;
  if (s.momentum != T(0)) {
    const T b = s.first_step ? d_p : s.momentum * *buf + (T(1) - s.dampening) * d_p;
    *buf = b;
    d_p = s.nesterov ? d_p + s.momentum * b : b;
  }
  p -= s.lr * d_p;
}

// One Adam/AdamW step's scalars; the bias corrections depend on the step count only, so the host
// computes them once: step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t).
template <class T>
struct AdamStep {
  T lr;
  T beta1;
  T beta2;
  T eps;
  T weight_decay;
  bool decoupled;  // AdamW: p *= 1 - lr wd before the update; Adam: g += wd p
  T step_size;
  T bias_correction2_sqrt;
};

// m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
// p -= step_size m / (sqrt(v) / bias_correction2_sqrt + eps).
template <class T>
VG_HD void adam_update(T& p, T g, T& m, T& v, const AdamStep<T>& s) {
  if (s.weight_decay != T(0)) {
    if (s.decoupled) p *= T(1) - s.lr * s.weight_decay;
    else g += s.weight_decay * p;
  }
  m = s.beta1 * m + (T(1) - s.beta1) * g;
  v = s.beta2 * v + (T(1) - s.beta2) * g * g;
  const T denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
  p -= s.step_size * m / denom;
}

namespace cpu {
// float and double. `buf` may be null when momentum is 0.
template <class T> void sgd_step(T* p, const T* g, T* buf, std::int64_t n, const SgdStep<T>& s);
template <class T> void adam_step(T* p, const T* g, T* m, T* v, std::int64_t n, const AdamStep<T>& s);
}  // namespace cpu

namespace cuda {
void sgd_step(float* p, const float* g, float* buf, std::int64_t n, const SgdStep<float>& s, Stream stream);
void adam_step(float* p, const float* g, float* m, float* v, std::int64_t n, const AdamStep<float>& s,
               Stream stream);
}  // namespace cuda

}  // namespace voxgrad::kernels
