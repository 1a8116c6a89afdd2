// Counter-based random numbers (Philox4x32-10, Salmon et al., SC 2011): element i of a draw depends
// only on (seed, offset, i), so the CPU and the GPU draw the same uniform bits in any order; normal
// and scaled draws agree within rounding (CUDA's log, sin, cos and fused multiply-adds).
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace voxgrad::kernels {

struct Philox4 {
  std::uint32_t v[4];
};

VG_HD void philox_mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t* hi, std::uint32_t* lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  *hi = static_cast<std::uint32_t>(p >> 32);
  *lo = static_cast<std::uint32_t>(p);
}

// Ten rounds of Philox4x32 on the 128-bit counter (ctr_lo, ctr_hi) with the 64-bit key `seed`.
VG_HD Philox4 philox4x32_10(std::uint64_t ctr_lo, std::uint64_t ctr_hi, std::uint64_t seed) {
  std::uint32_t c0 = static_cast<std::uint32_t>(ctr_lo), c1 = static_cast<std::uint32_t>(ctr_lo >> 32);
  std::uint32_t c2 = static_cast<std::uint32_t>(ctr_hi), c3 = static_cast<std::uint32_t>(ctr_hi >> 32);
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, &hi0, &lo0);
    philox_mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: 24 random mantissa bits, exact in float and double, never 0 (log-safe).
VG_HD float uint_to_unit_float(std::uint32_t x) { return static_cast<float>((x >> 8) + 1u) * (1.0f / 16777216.0f); }
VG_HD double uint_to_unit_double(std::uint32_t x) { return static_cast<double>((x >> 8) + 1u) * (1.0 / 16777216.0); }

// Element i of a uniform draw: lane i % 4 of the block at counter offset + i / 4.
VG_HD double philox_uniform(std::uint64_t seed, std::uint64_t offset, std::int64_t i) {
  const Philox4 r = philox4x32_10(offset + static_cast<std::uint64_t>(i) / 4, 0, seed);
  return uint_to_unit_double(r.v[i % 4]);
}

// Element i of a normal draw: Box-Muller on lanes (0, 1) of the block at offset + i / 2; even i
// takes the cosine, odd i the sine. Evaluated in double, so the devices differ only where CUDA's
// log, sin and cos differ from the host's in the last place.
VG_HD double philox_normal(std::uint64_t seed, std::uint64_t offset, std::int64_t i) {
  const Philox4 r = philox4x32_10(offset + static_cast<std::uint64_t>(i) / 2, 1, seed);
  const double u1 = uint_to_unit_double(r.v[0]);
  const double u2 = uint_to_unit_double(r.v[1]);
  const double radius = sqrt(-2.0 * log(u1));
  const double angle = 6.283185307179586 * u2;
  return (i % 2 == 0) ? radius * cos(angle) : radius * sin(angle);
}

// Counter blocks a draw of n elements may consume (normal draws use one per two elements); the
// generator advances its offset by this after every draw.
VG_HD std::uint64_t philox_blocks_used(std::int64_t n) { return (static_cast<std::uint64_t>(n) + 1) / 2; }

namespace cpu {
// float32 or float64: y[i] = low + (high - low) * uniform(i), or mean + std * normal(i).
void rand_uniform(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double low, double high);
void rand_normal(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double mean, double std);
}  // namespace cpu

namespace cuda {
// float32 only (float64 is CPU-only).
void rand_uniform(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double low, double high,
                  Stream s);
void rand_normal(DType t, void* y, std::int64_t n, std::uint64_t seed, std::uint64_t offset, double mean, double std,
                 Stream s);
}  // namespace cuda

}  // namespace voxgrad::kernels
