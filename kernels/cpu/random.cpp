// CPU twins of the Philox draws: element i is a pure function of (seed, offset, i) computed by the
// VG_HD functions in kernels/random.h, so any thread split gives the GPU's numbers.
#include "kernels/random.h"

#include "kernels/error.h"

namespace voxgrad::kernels::cpu {

namespace {

// Philox costs ten rounds per element, so threads pay off sooner than for plain copies.
constexpr std::int64_t kParallelMin = 1 << 12;

template <class T, class Draw>
void fill_draws(T* y, std::int64_t n, Draw draw) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(draw(i));
}

template <class Draw>
void fill_floating(const char* what, DType t, void* y, std::int64_t n, Draw draw) {
  switch (t) {
    case DType::Float32: return fill_draws(static_cast<float*>(y), n, draw);
    case DType::Float64: return fill_draws(static_cast<double*>(y), n, draw);
    default: break;
  }
  VG_FAIL(what << ": random draws are float32 or float64, not " << dtype_name(t));
}

}  // namespace

void rand_uniform(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double low,
                  double high) {
  const double width = high - low;
  fill_floating("rand_uniform", t, y, n,
                [=](std::int64_t i) { return low + width * philox_uniform(seed, offset, i); });
}

void rand_normal(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double mean,
                 double std) {
  fill_floating("rand_normal", t, y, n, [=](std::int64_t i) { return mean + std * philox_normal(seed, offset, i); });
}

}  // namespace voxgrad::kernels::cpu
