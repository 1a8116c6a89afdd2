// numpy's summation order, for results that must equal numpy's to the last bit: ndarray.sum over a
// contiguous run of values adds them pairwise (an 8-way unrolled loop below 128 values, halves
// above), which rounds differently from a plain loop.
#pragma once

#include <cstdint>

namespace voxgrad::pipeline {

template <class T>
T numpy_pairwise_sum(const T* a, std::int64_t n) {
  if (n < 8) {
    T sum = T(0);
    for (std::int64_t i = 0; i < n; ++i) sum += a[i];
    return sum;
  }
  if (n <= 128) {
    T r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    T sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) sum += a[i];
    return sum;
  }
  std::int64_t half = n / 2;
  half -= half % 8;
  return numpy_pairwise_sum(a, half) + numpy_pairwise_sum(a + half, n - half);
}

}  // namespace voxgrad::pipeline
