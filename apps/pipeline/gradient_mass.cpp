// The gradient mass split: see gradient_mass.h. Regions come from the reference alone, so every loss
// is measured on the same sets.
#include "apps/pipeline/gradient_mass.h"

#include <cmath>
#include <vector>

#include "apps/pipeline/connected_components.h"

namespace voxgrad::pipeline {

const char* gradient_region_name(int region) {
  static const char* const kNames[kGradientRegions] = {"small_structures", "large_structures", "boundaries",
                                                       "background"};
  return kNames[region];
}

double GradientMassSplit::total_mass() const {
  double sum = 0;
  for (double m : mass) sum += m;
  return sum;
}

std::int64_t GradientMassSplit::total_voxels() const {
  std::int64_t sum = 0;
  for (std::int64_t v : voxels) sum += v;
  return sum;
}

std::array<std::int64_t, kGradientRegions> count_regions(const std::int32_t* labels,
                                                         const std::array<std::int64_t, 3>& shape,
                                                         std::int64_t small_below, std::uint8_t* region_out) {
  const auto [nz, ny, nx] = shape;
  const ComponentLabels components = label_components(labels, shape, Connectivity::kFacesEdgesCorners);
  std::vector<std::int64_t> component_size(static_cast<std::size_t>(components.count()) + 1, 0);
  for (std::int64_t i = 0; i < nz * ny * nx; ++i) ++component_size[static_cast<std::size_t>(components.id[i])];

  std::array<std::int64_t, kGradientRegions> counts{};
  for (std::int64_t z = 0; z < nz; ++z)
    for (std::int64_t y = 0; y < ny; ++y)
      for (std::int64_t x = 0; x < nx; ++x) {
        const std::int64_t i = (z * ny + y) * nx + x;
        const std::int32_t own = labels[i];
        // A face neighbour of another class makes this voxel a boundary voxel, on either side.
        bool boundary = false;
        auto differs = [&](std::int64_t j) { boundary = boundary || labels[j] != own; };
        if (z > 0) differs(i - ny * nx);
        if (z + 1 < nz) differs(i + ny * nx);
        if (y > 0) differs(i - nx);
        if (y + 1 < ny) differs(i + nx);
        if (x > 0) differs(i - 1);
        if (x + 1 < nx) differs(i + 1);
        GradientRegion region = GradientRegion::kBackground;
        if (boundary)
          region = GradientRegion::kBoundaries;
        else if (own > 0)
          region = component_size[static_cast<std::size_t>(components.id[i])] < small_below
                       ? GradientRegion::kSmallStructures
                       : GradientRegion::kLargeStructures;
        ++counts[static_cast<int>(region)];
        if (region_out) region_out[i] = static_cast<std::uint8_t>(region);
      }
  return counts;
}

GradientMassSplit gradient_mass_split(const float* grad, std::int64_t channels, const std::int32_t* labels,
                                      const std::array<std::int64_t, 3>& shape, std::int64_t small_below) {
  const std::int64_t voxels = shape[0] * shape[1] * shape[2];
  std::vector<std::uint8_t> region(static_cast<std::size_t>(voxels));
  GradientMassSplit split;
  split.voxels = count_regions(labels, shape, small_below, region.data());
  for (std::int64_t c = 0; c < channels; ++c) {
    const float* g = grad + c * voxels;
    for (std::int64_t i = 0; i < voxels; ++i) split.mass[region[i]] += std::fabs(static_cast<double>(g[i]));
  }
  return split;
}

void accumulate(GradientMassSplit& into, const GradientMassSplit& other) {
  for (int r = 0; r < kGradientRegions; ++r) {
    into.mass[r] += other.mass[r];
    into.voxels[r] += other.voxels[r];
  }
}

}  // namespace voxgrad::pipeline
