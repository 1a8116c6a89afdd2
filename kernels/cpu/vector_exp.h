// exp for the CPU's softmax loops, written so that a loop over voxels vectorises: no branch, no
// library call. float: Cody-Waite reduction to r in [-ln2/2, ln2/2], Cephes' degree-6 polynomial
// for e^r (about 1 ulp), 2^n through the exponent bits. Where e^x is not a normal float it gives
// 0 below and the largest power the clamp allows above (no denormals, no infinity). double keeps
// std::exp, so the float64 gradchecks see the library's values.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace voxgrad::kernels::cpu {

inline float vector_exp(float x) {
  constexpr float kLowest = -87.3365447f;  // ln of the smallest normal float
  const bool underflows = x < kLowest;
  x = std::min(std::max(x, kLowest), 88.7228391f);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: adding it leaves no fraction bits.
  constexpr float kRound = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * r * r + r + 1.0f;
  const std::int32_t exponent = (static_cast<std::int32_t>(n) + 127) * (std::int32_t{1} << 23);
  return underflows ? 0.0f : e_r * std::bit_cast<float>(exponent);
}

inline double vector_exp(double x) { return std::exp(x); }

}  // namespace voxgrad::kernels::cpu
