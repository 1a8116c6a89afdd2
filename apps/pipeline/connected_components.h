// Connected components of a label map (each positive value its own foreground), found in two raster
// passes over a union-find forest, and what a prediction makes of each reference component: its
// size and how many of its voxels carry its class. Eval's --components is built on these.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace voxgrad::pipeline {

// Which voxels touch: 6 shares a face, 18 a face or an edge, 26 a face, an edge or a corner.
enum class Connectivity { kFaces = 6, kFacesEdges = 18, kFacesEdgesCorners = 26 };

// Component ids per voxel (0 where the label is 0 or negative, else 1..count) and each component's
// label value (`value[id - 1]`). Ids follow each component's first voxel in raster order (x fastest).
struct ComponentLabels {
  std::vector<std::int32_t> id;     // (Z, Y, X)
  std::vector<std::int32_t> value;  // (count)
  std::int32_t count() const { return static_cast<std::int32_t>(value.size()); }
};

// Voxels of one positive value that touch under `connectivity` join one component; voxels of other
// values never do. `shape` is (Z, Y, X).
ComponentLabels label_components(const std::int32_t* labels, const std::array<std::int64_t, 3>& shape,
                                 Connectivity connectivity);

// One component of a reference label map and what the prediction holds on its voxels.
struct ReferenceComponent {
  std::int32_t value = 0;        // its class
  std::int64_t voxels = 0;       // its size
  std::int64_t overlap = 0;      // its voxels the prediction gives its class
  std::int64_t first_voxel = 0;  // raster index (x fastest) of its first voxel
  // Detected: at least one voxel predicted as its class, however small the overlap.
  bool detected() const { return overlap > 0; }
};

// The components of `ref` (shape (Z, Y, X)), in id order, each with its overlap with `pred` (same
// shape). Labels beyond three axes are given as `volumes` (Z, Y, X) blocks one after another, each
// labelled on its own (components never cross from one block to the next).
std::vector<ReferenceComponent> reference_components(const std::int32_t* ref, const std::int32_t* pred,
                                                     const std::array<std::int64_t, 3>& shape,
                                                     Connectivity connectivity, std::int64_t volumes = 1);

}  // namespace voxgrad::pipeline
