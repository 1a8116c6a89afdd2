// Where a loss's gradient mass goes in one case: the sum over voxels of |∂loss/∂z| (all logit
// channels) split between four disjoint sets of voxels defined by the reference alone: boundaries
// (a voxel with a 6-neighbour of another class, on either side), the inside of small structures
// (reference components under `small_below` voxels, 26-connected), the inside of large ones, and
// the background away from any boundary. The loss study's gradient maps report this per loss.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace voxgrad::pipeline {

enum class GradientRegion { kSmallStructures = 0, kLargeStructures = 1, kBoundaries = 2, kBackground = 3 };
constexpr int kGradientRegions = 4;
// "small_structures", "large_structures", "boundaries", "background".
const char* gradient_region_name(int region);

struct GradientMassSplit {
  std::array<double, kGradientRegions> mass{};          // sum of |∂loss/∂z| over the set's voxels
  std::array<std::int64_t, kGradientRegions> voxels{};  // the set's size
  double total_mass() const;
  std::int64_t total_voxels() const;
};

// The region of every voxel of `labels` (shape (Z, Y, X), classes >= 0), as GradientRegion values.
std::array<std::int64_t, kGradientRegions> count_regions(const std::int32_t* labels,
                                                         const std::array<std::int64_t, 3>& shape,
                                                         std::int64_t small_below, std::uint8_t* region_out);

// grad (channels, Z, Y, X) against labels (Z, Y, X). small_below: 1000 voxels, the size bins' edge.
GradientMassSplit gradient_mass_split(const float* grad, std::int64_t channels, const std::int32_t* labels,
                                      const std::array<std::int64_t, 3>& shape, std::int64_t small_below = 1000);

// Adds another case's split into this one.
void accumulate(GradientMassSplit& into, const GradientMassSplit& other);

}  // namespace voxgrad::pipeline
