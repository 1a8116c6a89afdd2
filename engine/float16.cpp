// float16 rounding by bit manipulation (float) and by scaling with exact powers of two (double).
#include "engine/float16.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace voxgrad {

float round_to_float16(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = bits & 0x80000000u, magnitude = bits ^ sign;
  if (magnitude >= 0x7f800000u) return value;  // infinities and NaN stay
  if (magnitude >= 0x477ff000u)                // 65520 and above round to infinity
    return std::bit_cast<float>(sign | 0x7f800000u);
  if (magnitude < 0x38800000u) {  // below 2^-14: float16's subnormals, multiples of 2^-24
    const float scaled = std::nearbyint(std::bit_cast<float>(magnitude) * 16777216.0f);  // exact scaling
    return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(scaled / 16777216.0f));
  }
  // Keep 10 of float32's 23 mantissa bits, ties to even; a carry moves into the exponent as it should.
  const std::uint32_t lsb = (magnitude >> 13) & 1u;
  const std::uint32_t rounded = (magnitude + 0x0fffu + lsb) & ~0x1fffu;
  return std::bit_cast<float>(sign | rounded);
}

double round_to_float16(double value) {
  if (!std::isfinite(value)) return value;
  const double magnitude = std::fabs(value);
  if (magnitude >= 65520.0) return std::copysign(std::numeric_limits<double>::infinity(), value);
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude = m * 2^exponent, m in [0.5, 1)
  // float16 keeps 10 bits below the leading one; below 2^-14 the step stays 2^-24 (subnormals).
  const double quantum = std::ldexp(1.0, std::max(exponent - 1, -14) - 10);
  return std::copysign(std::nearbyint(magnitude / quantum) * quantum, value);
}

}  // namespace voxgrad
