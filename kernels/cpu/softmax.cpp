// CPU twins of softmax and log-softmax over the classes axis of (outer, classes, inner): one
// independent distribution per (outer, inner) position, each handled by the VG_HD functions.
#include "kernels/softmax.h"

namespace voxgrad::kernels::cpu {

namespace {
constexpr std::int64_t kParallelMin = 1 << 15;
}  // namespace

// Consecutive positions take consecutive inner indices, so each class row is read sequentially.
template <class T>
void softmax_forward(const T* x, T* y, std::int64_t outer, std::int64_t classes, std::int64_t inner, bool log_space) {
  const std::int64_t positions = outer * inner;
#pragma omp parallel for schedule(static) if (positions * classes > kParallelMin)
  for (std::int64_t p = 0; p < positions; ++p) {
    const std::int64_t o = p / inner, j = p - o * inner;
    const std::int64_t base = o * classes * inner + j;
    softmax_position_forward(x + base, y + base, classes, inner, log_space);
  }
}

template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, std::int64_t outer, std::int64_t classes, std::int64_t inner,
                      bool log_space) {
  const std::int64_t positions = outer * inner;
#pragma omp parallel for schedule(static) if (positions * classes > kParallelMin)
  for (std::int64_t p = 0; p < positions; ++p) {
    const std::int64_t o = p / inner, j = p - o * inner;
    const std::int64_t base = o * classes * inner + j;
    softmax_position_backward(y + base, dy + base, dx + base, classes, inner, log_space);
  }
}

template void softmax_forward<float>(const float*, float*, std::int64_t, std::int64_t, std::int64_t, bool);
template void softmax_forward<double>(const double*, double*, std::int64_t, std::int64_t, std::int64_t, bool);
template void softmax_backward<float>(const float*, const float*, float*, std::int64_t, std::int64_t, std::int64_t,
                                      bool);
template void softmax_backward<double>(const double*, const double*, double*, std::int64_t, std::int64_t,
                                       std::int64_t, bool);

}  // namespace voxgrad::kernels::cpu
