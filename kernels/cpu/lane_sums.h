// Sums in kLanes interleaved partial sums, added in a fixed order at the end: one running sum is
// a chain of dependent additions the compiler may not reorder, lanes vectorise, and the order
// still depends only on the row length, never on the thread count.
#pragma once

#include <cstdint>

namespace voxgrad::kernels::cpu {

constexpr int kLanes = 8;
struct LaneSums {
  double lane[kLanes] = {};
  double total() const {
    double pairs[kLanes / 2];
    for (int l = 0; l < kLanes / 2; ++l) pairs[l] = lane[2 * l] + lane[2 * l + 1];
    return (pairs[0] + pairs[1]) + (pairs[2] + pairs[3]);
  }
};
static_assert(kLanes == 8, "LaneSums::total adds eight lanes");

// sums.lane[j % kLanes] += term(j) for j in [0, n).
template <class Term>
void add_to_lanes(LaneSums& sums, std::int64_t n, Term term) {
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) sums.lane[l] += term(j + l);
  for (int l = 0; j + l < n; ++l) sums.lane[l] += term(j + l);
}

}  // namespace voxgrad::kernels::cpu
