// CPU twins of the optimizer updates: OpenMP loops over the VG_HD math in kernels/optim.h,
// instantiated for float and double (double for the exact formula tests).
#include "kernels/optim.h"

namespace voxgrad::kernels::cpu {

namespace {
// Below this many elements a parallel region costs more than the update it would split.
constexpr std::int64_t kParallelMin = 1 << 15;
}  // namespace

template <class T>
void sgd_step(T* p, const T* g, T* buf, std::int64_t n, const SgdStep<T>& s) {
  const SgdStep<T> step = s;  // a local copy the vectoriser can keep in registers
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) sgd_update(p[i], g[i], buf == nullptr ? nullptr : buf + i, step);
}

template <class T>
void adam_step(T* p, const T* g, T* m, T* v, std::int64_t n, const AdamStep<T>& s) {
  const AdamStep<T> step = s;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) adam_update(p[i], g[i], m[i], v[i], step);
}

template void sgd_step<float>(float*, const float*, float*, std::int64_t, const SgdStep<float>&);
template void sgd_step<double>(double*, const double*, double*, std::int64_t, const SgdStep<double>&);
template void adam_step<float>(float*, const float*, float*, float*, std::int64_t, const AdamStep<float>&);
template void adam_step<double>(double*, const double*, double*, double*, std::int64_t, const AdamStep<double>&);

}  // namespace voxgrad::kernels::cpu
